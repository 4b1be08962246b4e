// A Go h2c (cleartext HTTP/2) client and server for nhiwatch's sockets tests, on Debian's
// golang.org/x/net/http2 (built with Debian's Go in GOPATH mode, no module downloads).
//
//	h2c client URL N   N requests on one prior-knowledge h2c connection (http2.Transport with
//	                   AllowHTTP), a bearer token from NHIWATCH_TOKEN (never printed)
//	h2c server PORT    serves h2c on 127.0.0.1:PORT, both prior knowledge and the HTTP/1.1
//	                   `Upgrade: h2c` switch (x/net's h2c handler), until stdin closes
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

func client(url string, n int) {
	tr := &http2.Transport{
		AllowHTTP: true,
		// Prior knowledge: the "TLS" dial is a plain TCP connection.
		DialTLS: func(network, addr string, _ *tls.Config) (net.Conn, error) {
			return net.Dial(network, addr)
		},
	}
	c := &http.Client{Transport: tr}
	for i := 0; i < n; i++ {
		req, err := http.NewRequest("GET", fmt.Sprintf("%s%d", url, 100+i), nil)
		if err != nil {
			panic(err)
		}
		req.Header.Set("Authorization", "Bearer "+os.Getenv("NHIWATCH_TOKEN"))
		resp, err := c.Do(req)
		if err != nil {
			panic(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
			panic(fmt.Sprintf("status %d proto %s", resp.StatusCode, resp.Proto))
		}
	}
	fmt.Println("ok")
}

func server(port string) {
	lis, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		panic(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"proto\":%q}", r.Proto)
	})
	go http.Serve(lis, h2c.NewHandler(h, &http2.Server{}))
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
}

func main() {
	switch os.Args[1] {
	case "client":
		n, _ := strconv.Atoi(os.Args[3])
		client(os.Args[2], n)
	case "server":
		server(os.Args[2])
	default:
		panic("usage: h2c client URL N | h2c server PORT")
	}
}
