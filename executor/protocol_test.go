package executor

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
)

var testSecret = []byte("k3y-of-the-fleet")

// TestSignVector pins the signature to vectors computed by openssl:
// printf 'POST\n/e/3/v1/evals\n1700000000000\n{...}' | openssl dgst -sha256 -hmac k3y-of-the-fleet
func TestSignVector(t *testing.T) {
	t.Parallel()
	tests := []struct{ method, path, deadline, body, want string }{
		{"POST", "/e/3/v1/evals", "1700000000000", `{"eval_id":"e","fence":1,"spec":{}}`, "v1=f21307ae33bdcff89101c176b9ca9b8dec3a5b85521d7ef602887c6945a8c36f"},
		{"POST", "/v1/lease", "", `{}`, "v1=dbc319563fd59cbca22ce6faf28b154a87cf8f696bb3c937d957756c3cba06bf"},
	}
	for _, tt := range tests {
		if got := Sign(testSecret, tt.method, tt.path, tt.deadline, []byte(tt.body)); got != tt.want {
			t.Errorf("Sign(%s %s %q) = %s, want %s", tt.method, tt.path, tt.deadline, got, tt.want)
		}
		if !Verify(testSecret, tt.want, tt.method, tt.path, tt.deadline, []byte(tt.body)) {
			t.Errorf("Verify(%s %s %q) refused %s", tt.method, tt.path, tt.deadline, tt.want)
		}
		if Verify(testSecret, tt.want, tt.method, tt.path+"x", tt.deadline, []byte(tt.body)) || Verify([]byte("not-the-key"), tt.want, tt.method, tt.path, tt.deadline, []byte(tt.body)) {
			t.Errorf("Verify(%s %s %q) accepted %s for another path or key", tt.method, tt.path, tt.deadline, tt.want)
		}
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.Handler
		want    Health
		wantErr bool
	}{
		{"JSON with an ID", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = io.WriteString(w, `{"status":"ok","instance_id":"exec-a"}`)
		}), Health{Status: "ok", InstanceID: "exec-a"}, false},
		{"plain ok", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }), Health{Status: "ok"}, false},
		{"JSON without an ID", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, `{"status":"ok"}`) }), Health{Status: "ok"}, false},
		{"503", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "draining", http.StatusServiceUnavailable) }), Health{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(tt.handler)
			defer ts.Close()
			c := &Client{}
			h, err := c.Health(t.Context(), ts.URL)
			if (err != nil) != tt.wantErr || h != tt.want {
				t.Fatalf("Health = %+v, %v; want %+v, error %t", h, err, tt.want, tt.wantErr)
			}
			if err := c.Healthy(t.Context(), ts.URL); (err != nil) != tt.wantErr {
				t.Fatalf("Healthy = %v", err)
			}
		})
	}
}
