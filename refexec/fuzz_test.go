package refexec

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/evalpool/evalpool/executor"
)

// FuzzHandlers: whatever a POST holds, the server answers one of the
// protocol's statuses and never panics; an unsigned or badly signed one is a
// 401 that changes nothing but the Unauthorized count.
func FuzzHandlers(f *testing.F) {
	for _, seed := range []struct {
		lease    bool
		body     string
		deadline string
		sig      uint8 // 0 none, 1 good, 2 good but for the other path, 3 garbage
	}{
		{false, `{"eval_id":"e","fence":1,"spec":{}}`, "", 1},
		{false, `{"eval_id":"e","fence":9223372036854775807,"spec":{},"lease_ms":50}`, "", 0},
		{false, `{"eval_id":"e","fence":2,"spec":{"q":1},"lease_ms":-4}`, "99999999999999", 1},
		{false, `{"eval_id":"e","fence":3,"spec":{}}`, "1", 1},
		{false, `{"eval_id":"","fence":1,"spec":null}`, "", 2},
		{true, `{"eval_id":"e","fence":1,"lease_ms":100}`, "", 1},
		{true, `{"eval_id":"e","fence":-1,"lease_ms":9223372036854775807}`, "", 1},
		{true, `{"eval_id":"e","fence":1,"lease_ms":100}`, "", 3},
		{false, `{"eval_id":"e","fence":1,"spec":{}} trailing`, "", 1},
		{false, `[`, "x", 1},
	} {
		f.Add(seed.lease, []byte(seed.body), seed.deadline, seed.sig)
	}
	secret := []byte("fuzz-secret")
	f.Fuzz(func(t *testing.T, lease bool, body []byte, deadline string, sig uint8) {
		s, err := New(Options{Secret: secret})
		if err != nil {
			t.Fatal(err)
		}
		path, other := executor.PathEvals, executor.PathLease
		if lease {
			path, other = other, path
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(executor.DeadlineHeader, deadline)
		now := time.Now().UnixMilli()
		switch sig % 4 {
		case 1:
			req.Header.Set(executor.SignatureHeader, executor.SignV2(secret, http.MethodPost, req.Host, path, req.Header.Get(executor.DeadlineHeader), now, body))
		case 2:
			req.Header.Set(executor.SignatureHeader, executor.SignV2(secret, http.MethodPost, req.Host, other, req.Header.Get(executor.DeadlineHeader), now, body))
		case 3:
			req.Header.Set(executor.SignatureHeader, "v2="+deadline)
		}
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, req)
		st := s.Stats()
		if sig%4 != 1 {
			if rec.Code != http.StatusUnauthorized || st != (Stats{Unauthorized: 1}) {
				t.Fatalf("badly signed: %d, stats %+v; want a 401 changing nothing", rec.Code, st)
			}
			return
		}
		switch rec.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound, http.StatusConflict, http.StatusGatewayTimeout, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
		if st.Unauthorized != 0 || st.Running {
			t.Fatalf("signed request: stats %+v", st)
		}
	})
}
