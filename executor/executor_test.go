package executor

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestBadAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    string
	}{
		{"not json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("<html>oops")) }, "bad answer"},
		{"unknown status", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(`{"status":"maybe"}`)) }, `status "maybe"`},
		{"500", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) }, "500 Internal Server Error: boom"},
		{"empty 200", func(http.ResponseWriter, *http.Request) {}, "bad answer"},
		{"huge", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"status":"passed","output":"`))
			_, _ = w.Write(make([]byte, MaxAnswerBytes))
		}, "longer than"},
		{"closed connection", func(w http.ResponseWriter, _ *http.Request) {
			conn, _, _ := w.(http.Hijacker).Hijack()
			conn.Close()
		}, "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts := httptest.NewServer(tt.handler)
			defer ts.Close()
			_, err := (&Client{}).Run(t.Context(), ts.URL, Request{EvalID: "e", Fence: 1, Spec: []byte(`{}`)})
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("err = %v, want one line holding %q", err, tt.want)
			}
		})
	}
}
