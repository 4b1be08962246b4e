module nhiwatch.bench/goloop

go 1.19
