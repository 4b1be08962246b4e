// goloop: a minimal Go HTTPS keep-alive client for `cargo xtask bench` (benchmark 9), the Go
// twin of bench/tlsloop.c: one crypto/tls handshake, then N `GET /` requests on the same
// connection, each one (*tls.Conn).Write and (*tls.Conn).Reads until the Content-Length body is
// in. Prints "ns/request N wall_s cpu_s" (the same four numbers tlsloop prints). With N = 0 it
// prints "ready" and waits for stdin to close: the benchmark's way to have the binary running
// (for the daemon to find and probe) without any TLS traffic.
package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func fail(format string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, "goloop: "+format+"\n", a...)
	os.Exit(1)
}

// request sends one GET and reads the whole response, checking the status.
func request(c *tls.Conn, r *bufio.Reader, req []byte) error {
	if _, err := c.Write(req); err != nil {
		return err
	}
	status, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200") {
		return fmt.Errorf("status %q", status)
	}
	length := -1
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if length < 0 {
		return fmt.Errorf("no Content-Length")
	}
	_, err = io.CopyN(io.Discard, r, int64(length))
	return err
}

func main() {
	if len(os.Args) != 3 {
		fail("usage: goloop PORT REQUESTS")
	}
	n, err := strconv.ParseInt(os.Args[2], 10, 64)
	if err != nil || n < 0 {
		fail("bad request count %q", os.Args[2])
	}
	if n == 0 {
		fmt.Println("ready")
		io.Copy(io.Discard, os.Stdin)
		return
	}
	c, err := tls.Dial("tcp", "127.0.0.1:"+os.Args[1], &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"})
	if err != nil {
		fail("TLS handshake failed: %v", err)
	}
	defer c.Close()
	r := bufio.NewReaderSize(c, 16384)
	req := []byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
	if err := request(c, r, req); err != nil {
		fail("warm-up request failed: %v", err)
	}
	cpu0, t0 := cpuSeconds(), time.Now()
	for i := int64(0); i < n; i++ {
		if err := request(c, r, req); err != nil {
			fail("request %d failed: %v", i, err)
		}
	}
	dt := time.Since(t0).Seconds()
	fmt.Printf("%.1f %d %.6f %.6f\n", dt*1e9/float64(n), n, dt, cpuSeconds()-cpu0)
}
