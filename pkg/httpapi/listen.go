package httpapi

import (
	"fmt"
	"net"
	"strings"
)

// CheckListen refuses to expose the API without authentication: addr must
// be host:port, and a host that is not loopback (127.0.0.0/8, ::1,
// localhost) needs a token. An empty host listens on every interface.
func CheckListen(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("http.listen %q: %v; want host:port, such as 127.0.0.1:7070", addr, err)
	}
	if token != "" || isLoopback(host) {
		return nil
	}
	return fmt.Errorf("http.listen %s is not a loopback address; set http.token so the API is not open to the network without authentication", addr)
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
