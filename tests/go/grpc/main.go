// A gRPC-go client (Debian's google.golang.org/grpc, its own HTTP/2 over crypto/tls) calling the
// standard health service of a gRPC server in the same process, with a bearer token in the
// metadata (from the environment, never printed). Built with Debian's Go in GOPATH mode.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strconv"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

func main() {
	// args: cert key calls
	cert, err := tls.LoadX509KeyPair(os.Args[1], os.Args[2])
	if err != nil {
		panic(err)
	}
	calls, _ := strconv.Atoi(os.Args[3])
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	conn, err := grpc.Dial(lis.Addr().String(),
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, ServerName: "grpc.nhiwatch.test"})))
	if err != nil {
		panic(err)
	}
	client := healthpb.NewHealthClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+os.Getenv("TOKEN"))
	for i := 0; i < calls; i++ {
		r, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			panic(err)
		}
		fmt.Println("status", r.Status)
	}
	conn.Close()
	srv.Stop()
}
