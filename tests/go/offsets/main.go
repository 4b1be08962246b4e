// Prints the struct offsets nhiwatch's Go TLS sensor follows from a *tls.Conn to its socket's
// fd, read with reflect from this toolchain's own standard library (unexported fields included),
// so the table in monitor/src/probes/golang.rs is checked against every installed toolchain.
package main

import (
	"crypto/tls"
	"fmt"
	"net"
	"reflect"
	"runtime"
)

func field(t reflect.Type, name string) reflect.StructField {
	f, ok := t.FieldByName(name)
	if !ok {
		panic(t.String() + " has no field " + name)
	}
	return f
}

func main() {
	conn := field(reflect.TypeOf(tls.Conn{}), "conn")
	inner := field(reflect.TypeOf(net.TCPConn{}), "conn")
	fd := field(inner.Type, "fd")
	pfd := field(fd.Type.Elem(), "pfd")
	sysfd := field(pfd.Type, "Sysfd")
	fmt.Printf("%s conn=%d tcpconn_fd=%d netfd_sysfd=%d\n", runtime.Version(),
		conn.Offset, inner.Offset+fd.Offset, pfd.Offset+sysfd.Offset)
}
