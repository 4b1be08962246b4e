module nhiwatch.test/gooffsets

go 1.17
