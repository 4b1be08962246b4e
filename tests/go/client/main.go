// A minimal Go HTTPS client for nhiwatch's Go TLS tests: net/http over crypto/tls, HTTP/1.1 or
// HTTP/2, a bearer token from the environment (never printed), several connections or several
// goroutines sharing one HTTP/2 connection, and optional deep recursion before each request so
// goroutine stacks grow (and move) while the TLS functions are probed.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"strings"
	"sync"
)

var (
	base       = flag.String("url", "", "https://host:port")
	caFile     = flag.String("ca", "", "CA certificate (PEM)")
	h2         = flag.Bool("h2", false, "HTTP/2 (else HTTP/1.1)")
	paths      = flag.String("paths", "/hello", "comma-separated paths, requested in order on each connection")
	conns      = flag.Int("conns", 1, "connections, each with its own transport, run in parallel")
	goroutines = flag.Int("goroutines", 1, "goroutines per connection sharing it (HTTP/2)")
	deep       = flag.Int("deep", 0, "recursion depth (frames of 1 KiB) before each request")
	waitAfter  = flag.Bool("wait-after", false, "after the requests, print \"done\" and wait for a line on stdin (connections stay open)")
	waitStdin  = flag.Bool("wait-stdin", false, "print \"ready\" and wait for a line on stdin before the first request")
)

// grow recurses with a large frame so the goroutine's stack is copied to a bigger one.
//
//go:noinline
func grow(n int) int {
	var pad [1024]byte
	pad[n%1024] = byte(n)
	if n == 0 {
		return int(pad[0])
	}
	return grow(n-1) + int(pad[n%1024])
}

func transport(pool *x509.CertPool, addr string) *http.Transport {
	t := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool},
		ForceAttemptHTTP2: *h2,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		MaxConnsPerHost: 1,
	}
	if !*h2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

func main() {
	flag.Parse()
	pem, err := os.ReadFile(*caFile)
	if err != nil {
		panic(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if *waitStdin {
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	addr := os.Getenv("CONNECT_TO")
	token := os.Getenv("TOKEN")
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := false
	for c := 0; c < *conns; c++ {
		client := &http.Client{Transport: transport(pool, addr)}
		for g := 0; g < *goroutines; g++ {
			wg.Add(1)
			go func(c, g int) {
				defer wg.Done()
				for _, p := range strings.Split(*paths, ",") {
					p = strings.NewReplacer("{c}", fmt.Sprint(c), "{g}", fmt.Sprint(g)).Replace(p)
					if *deep > 0 {
						grow(*deep)
					}
					req, _ := http.NewRequest("GET", *base+p, nil)
					req.Header.Set("Authorization", "Bearer "+token)
					trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
						mu.Lock()
						fmt.Printf("conn %d path %s local %s\n", c, p, i.Conn.LocalAddr())
						mu.Unlock()
					}}
					req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
					resp, err := client.Do(req)
					if err != nil {
						fmt.Fprintln(os.Stderr, "request:", err)
						mu.Lock()
						failed = true
						mu.Unlock()
						continue
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					fmt.Printf("status %d path %s proto %s\n", resp.StatusCode, p, resp.Proto)
					mu.Unlock()
				}
			}(c, g)
		}
	}
	wg.Wait()
	if *waitAfter {
		fmt.Println("done")
		bufio.NewReader(os.Stdin).ReadString('\n')
	}
	if failed {
		os.Exit(1)
	}
}
