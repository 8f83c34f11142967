package httpapi

import (
	"strings"
	"testing"
)

func TestCheckListen(t *testing.T) {
	tests := []struct {
		addr, token string
		wantErr     string // "" for no error
	}{
		{"127.0.0.1:7070", "", ""},
		{"127.9.8.7:7070", "", ""},
		{"[::1]:7070", "", ""},
		{"localhost:7070", "", ""},
		{"LocalHost:7070", "", ""},
		{"0.0.0.0:7070", "", "not a loopback address; set http.token"},
		{":7070", "", "not a loopback address"},
		{"10.0.0.5:7070", "", "not a loopback address"},
		{"[::]:7070", "", "not a loopback address"},
		{"api.example.com:7070", "", "not a loopback address"},
		{"0.0.0.0:7070", "s3cret", ""},
		{"api.example.com:7070", "s3cret", ""},
		{"127.0.0.1", "", "want host:port"},
		{"", "s3cret", "want host:port"},
	}
	for _, tt := range tests {
		t.Run(tt.addr+"/"+tt.token, func(t *testing.T) {
			err := CheckListen(tt.addr, tt.token)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("CheckListen(%q, %q) = %v, want nil", tt.addr, tt.token, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("CheckListen(%q, %q) = %v, want an error mentioning %q", tt.addr, tt.token, err, tt.wantErr)
			}
		})
	}
	const want = "http.listen 0.0.0.0:7070 is not a loopback address; set http.token so the API is not open to the network without authentication"
	if err := CheckListen("0.0.0.0:7070", ""); err == nil || err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
}
