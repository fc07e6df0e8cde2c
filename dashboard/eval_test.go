package dashboard

import (
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

// The eval page is served at /evals/ID, a run's eval ID's slash as it is
// or escaped, behind the token, with a policy that runs its own script and
// nothing else; its logout and login links lead to the dashboard's root
// however deep the ID.
func TestEvalPage(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{AuthToken: testToken}, unlimited, "http://e1:9001")
	bearer := []string{"Authorization", "Bearer " + testToken}
	cookie := []string{"Cookie", login(t, b.url)}
	for _, tc := range []struct {
		name, path string
		headers    []string
		code       int
		want       string // in the body; for a 303, where it sends
	}{
		{"run's eval", "/evals/nightly/k1", bearer, 200, `action="../../logout"`},
		{"run's eval, cookie", "/evals/nightly/k1", cookie, 200, `action="../../logout"`},
		{"escaped slash: one directory, as the browser sees it", "/evals/nightly%2Fk1", bearer, 200, `action="../logout"`},
		{"escaped slash, no token: sent to log in", "/evals/nightly%2Fk1", nil, 303, "../login?next=%2Fevals%2Fnightly%252Fk1"},
		{"key with a slash", "/evals/nightly/a/b?pool=gpu", bearer, 200, `action="../../../logout"`},
		{"plain eval", "/evals/e-1", bearer, 200, `action="../logout"`},
		{"no token: a browser, sent to log in", "/evals/nightly/k1", nil, 303, "../../login?next=%2Fevals%2Fnightly%2Fk1"},
		{"no token, another pool: sent to log in, and back to that pool's eval", "/evals/nightly/k1?pool=gpu", nil, 303, "../../login?next=%2Fevals%2Fnightly%2Fk1%3Fpool%3Dgpu"},
		{"wrong token", "/evals/nightly/k1", []string{"Authorization", "Bearer wrong-" + testToken}, 401, "log in"},
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
		if !strings.Contains(body, `"api/v1/evals/"`) {
			t.Errorf("%s: not the eval page: %.300s", tc.name, body)
		}
		checkCSP(t, tc.name, resp.Header.Get("Content-Security-Policy"), body)
	}
}

var (
	inlineScripts = regexp.MustCompile(`(?s)<script>(.*?)</script>`)
	cspScripts    = regexp.MustCompile(`script-src((?: 'sha256-[A-Za-z0-9+/=]+')+);`)
	// Markup that runs script besides an inline <script>, which the policy
	// would refuse to run: the page would be broken.
	otherScript = regexp.MustCompile(`(?i)<script[^>]*\ssrc=|\son[a-z]+\s*=|javascript:`)
)

// checkCSP checks a page's policy: nothing but its own inline scripts runs,
// by their hashes, each of them does, and it reaches its own origin only.
func checkCSP(t *testing.T, name, csp, body string) {
	t.Helper()
	for _, want := range []string{"default-src 'none'", "connect-src 'self'", "base-uri 'none'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: Content-Security-Policy %q lacks %s", name, csp, want)
		}
	}
	m := cspScripts.FindStringSubmatch(csp)
	if m == nil {
		t.Fatalf("%s: Content-Security-Policy %q allows no script by its hash", name, csp)
	}
	allowed := strings.Fields(m[1])
	scripts := inlineScripts.FindAllStringSubmatch(body, -1)
	if len(scripts) == 0 || len(scripts) != len(allowed) {
		t.Errorf("%s: %d inline scripts, %d hashes in the policy", name, len(scripts), len(allowed))
	}
	for _, s := range scripts {
		sum := sha256.Sum256([]byte(s[1]))
		if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(m[1], h) {
			t.Errorf("%s: the policy does not run the page's script (%s)", name, h)
		}
	}
	if s := otherScript.FindString(inlineScripts.ReplaceAllString(body, "")); s != "" {
		t.Errorf("%s: the page has script the policy refuses: %q", name, s)
	}
}
