package dashboard

import (
	"strings"
	"testing"
)

// The compare page is served at /compare, with the runs to compare or
// without (its picker), behind the token, with a policy that runs its own
// script and nothing else, and reads the API's comparison.
func TestComparePage(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{AuthToken: testToken}, unlimited)
	bearer := []string{"Authorization", "Bearer " + testToken}
	cookie := []string{"Cookie", login(t, b.url)}
	for _, tc := range []struct {
		name, path string
		headers    []string
		code       int
		want       string // in the body; for a 303, where it sends
	}{
		{"both runs", "/compare?base=a&head=b", bearer, 200, `action="logout"`},
		{"both runs, cookie", "/compare?base=a&head=b", cookie, 200, `action="logout"`},
		{"the picker", "/compare", bearer, 200, `action="logout"`},
		{"one run", "/compare?base=a", bearer, 200, `action="logout"`},
		{"no token: a browser, sent to log in, and back to the same two runs", "/compare?base=a&head=b", nil, 303, "login?next=%2Fcompare%3Fbase%3Da%26head%3Db"},
		{"no token, the picker", "/compare", nil, 303, "login?next=%2Fcompare"},
		{"wrong token", "/compare?base=a&head=b", []string{"Authorization", "Bearer wrong-" + testToken}, 401, "log in"},
	} {
		resp, body := req(t, "GET", b.url+tc.path, "", tc.headers...)
		if tc.code == 303 {
			if resp.StatusCode != tc.code || resp.Header.Get("Location") != tc.want {
				t.Errorf("%s: GET %s: %d to %q, want %d to %s", tc.name, tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.code, tc.want)
			}
			continue
		}
		if resp.StatusCode != tc.code || !strings.Contains(body, tc.want) || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Errorf("%s: GET %s: %d %q, want %d with %s: %.300s", tc.name, tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.code, tc.want, body)
			continue
		}
		if tc.code != 200 {
			continue
		}
		if !strings.Contains(body, `"/compare?against="`) || !strings.Contains(body, `id="pick"`) {
			t.Errorf("%s: not the compare page: %.300s", tc.name, body)
		}
		checkCSP(t, tc.name, resp.Header.Get("Content-Security-Policy"), body)
	}
	if resp, _ := req(t, "GET", b.url+"/compare/a", "", bearer...); resp.StatusCode != 404 {
		t.Errorf("/compare/a: %d, want 404", resp.StatusCode)
	}
}
