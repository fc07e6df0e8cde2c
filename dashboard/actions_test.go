package dashboard

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/evalpool/evalpool/pool"
)

// Pool actions are served only with --admin and a token; each does what
// its CLI command does, and bad input is one line that changes nothing.
func TestPoolActions(t *testing.T) {
	t.Parallel()
	bearer := []string{"Authorization", "Bearer " + testToken, "Content-Type", "application/json"}
	for _, tc := range []struct {
		name string
		opts Options
	}{
		{"no --admin", Options{AuthToken: testToken}},
		{"no token", Options{Admin: true}},
	} {
		_, b := setupWith(t, tc.opts)
		resp, body := req(t, "POST", b.url+"/api/pool/action", `{"url":"http://e1:9001","action":"quarantine"}`, append(bearer, "Origin", b.url)...)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "--admin and a token") {
			t.Errorf("%s: %d %s, want 403", tc.name, resp.StatusCode, body)
		}
		if pageActions(t, b) {
			t.Errorf("%s: the page is told it may act", tc.name)
		}
	}

	_, b := setupWith(t, Options{Admin: true, AuthToken: testToken})
	if !pageActions(t, b) {
		t.Errorf("with --admin and a token the page is not told it may act")
	}
	state := func(url string) (quarantined bool, registered bool) {
		t.Helper()
		st, err := b.pool.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range st.Executors {
			if e.URL == url {
				return e.Quarantine != nil, true
			}
		}
		return false, false
	}
	for _, tc := range []struct {
		body, contentType string
		code              int
		outcome           string
	}{
		{`{"url":"http://e1:9001","action":"quarantine"}`, "application/json", 200, string(pool.Quarantined)},
		{`{"url":"http://e1:9001","action":"quarantine"}`, "application/json", 200, string(pool.AlreadyQuarantined)},
		{`{"url":"http://e1:9001","action":"return"}`, "application/json", 200, string(pool.Returned)},
		{`{"url":"http://e2:9001","action":"remove"}`, "application/json", 200, string(pool.Removed)},
		{`{"url":"http://nosuch:9001","action":"quarantine"}`, "application/json", 404, ""},
		{`{"url":"::bad","action":"quarantine"}`, "application/json", 400, ""},
		{`{"url":"http://e1:9001","action":"delete"}`, "application/json", 400, ""},
		{`{"url":"http://e1:9001","action":"quarantine","extra":1}`, "application/json", 400, ""},
		{`{"url":"http://e1:9001"`, "application/json", 400, ""},
		{`{"url":"http://e1:9001","action":"return"}{"junk"`, "application/json", 400, ""},
		{`url=http://e1:9001&action=quarantine`, "application/x-www-form-urlencoded", 415, ""},
	} {
		resp, body := req(t, "POST", b.url+"/api/pool/action", tc.body, "Authorization", "Bearer "+testToken, "Content-Type", tc.contentType)
		if resp.StatusCode != tc.code || tc.outcome != "" && !strings.Contains(body, `"outcome":"`+tc.outcome+`"`) || tc.code != 200 && (!strings.Contains(body, `"error"`) || strings.Count(strings.TrimSpace(body), "\n") > 0) {
			t.Errorf("%s (%s): %d %s, want %d %s", tc.body, tc.contentType, resp.StatusCode, body, tc.code, tc.outcome)
		}
	}
	if q, ok := state("http://e1:9001"); q || !ok {
		t.Errorf("e1 after quarantine and return: quarantined %v, registered %v; want in service", q, ok)
	}
	if _, ok := state("http://e2:9001"); ok {
		t.Errorf("e2 still registered after remove")
	}
	// A logged-in browser's cookie from another site is refused.
	cookie := login(t, b.url)
	resp, _ := req(t, "POST", b.url+"/api/pool/action", `{"url":"http://e3:9001","action":"quarantine"}`, "Cookie", cookie, "Content-Type", "application/json", "Origin", "https://attacker.example")
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("a cross-site action with the cookie: %d, want 403", resp.StatusCode)
	}
	if q, _ := state("http://e3:9001"); q {
		t.Errorf("a refused action quarantined e3")
	}
}

// pageActions reports whether the pool page is told it may act.
func pageActions(t *testing.T, b *testBundle) bool {
	t.Helper()
	resp, body := req(t, "GET", b.url+"/api/pool/page", "", "Authorization", "Bearer "+testToken)
	var v PageView
	if resp.StatusCode != 200 || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("/api/pool/page: %d %.200s", resp.StatusCode, body)
	}
	return v.Actions
}
