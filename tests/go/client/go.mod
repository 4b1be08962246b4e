module nhiwatch.test/goclient

go 1.17
