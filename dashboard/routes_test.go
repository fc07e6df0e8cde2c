package dashboard

import (
	"crypto/sha256"
	"encoding/base64"
	"regexp"
	"strings"
	"testing"
)

// Each page is served behind the token, with a policy that runs its own
// script and nothing else: the pool page at /, the runs at /runs and
// /runs/NAME, the compare page at /compare (with the runs to compare or
// without, its picker), and the eval page at /evals/ID, a run's eval ID's
// slash as it is or escaped. A browser without the token is sent to log
// in, and back to the same page; the logout and login links lead to the
// dashboard's root however deep the page.
func TestPageRoutes(t *testing.T) {
	t.Parallel()
	_, b := setupTuned(t, Options{AuthToken: testToken}, unlimited, "http://e1:9001")
	bearer := []string{"Authorization", "Bearer " + testToken}
	cookie := []string{"Cookie", login(t, b.url)}
	const (
		pool    = `id="executors-table"`
		runs    = `id="runs-table"`
		compare = `id="pick"`
		eval    = `"api/v1/evals/"`
	)
	for _, tc := range []struct {
		name, path string
		headers    []string
		code       int
		want       string // in the body; for a 303, where it sends
		page       string // in the body of a 200
	}{
		{"pool", "/", bearer, 200, `action="logout"`, pool},
		{"runs", "/runs", cookie, 200, `action="logout"`, runs},
		{"a run", "/runs/nightly", bearer, 200, `action="../logout"`, runs},
		{"both runs", "/compare?base=a&head=b", bearer, 200, `action="logout"`, compare},
		{"both runs, cookie", "/compare?base=a&head=b", cookie, 200, `action="logout"`, compare},
		{"the picker", "/compare", bearer, 200, `action="logout"`, compare},
		{"one run", "/compare?base=a", bearer, 200, `action="logout"`, compare},
		{"no token: a browser, sent to log in, and back to the same two runs", "/compare?base=a&head=b", nil, 303, "login?next=%2Fcompare%3Fbase%3Da%26head%3Db", ""},
		{"no token, the picker", "/compare", nil, 303, "login?next=%2Fcompare", ""},
		{"run's eval", "/evals/nightly/k1", bearer, 200, `action="../../logout"`, eval},
		{"run's eval, cookie", "/evals/nightly/k1", cookie, 200, `action="../../logout"`, eval},
		{"escaped slash: one directory, as the browser sees it", "/evals/nightly%2Fk1", bearer, 200, `action="../logout"`, eval},
		{"escaped slash, no token: sent to log in", "/evals/nightly%2Fk1", nil, 303, "../login?next=%2Fevals%2Fnightly%252Fk1", ""},
		{"key with a slash", "/evals/nightly/a/b?pool=gpu", bearer, 200, `action="../../../logout"`, eval},
		{"plain eval", "/evals/e-1", bearer, 200, `action="../logout"`, eval},
		{"no token: a browser, sent to log in", "/evals/nightly/k1", nil, 303, "../../login?next=%2Fevals%2Fnightly%2Fk1", ""},
		{"no token, another pool: sent to log in, and back to that pool's eval", "/evals/nightly/k1?pool=gpu", nil, 303, "../../login?next=%2Fevals%2Fnightly%2Fk1%3Fpool%3Dgpu", ""},
		{"wrong token", "/evals/nightly/k1", []string{"Authorization", "Bearer wrong-" + testToken}, 401, "log in", ""},
		{"wrong token, compare", "/compare?base=a&head=b", []string{"Authorization", "Bearer wrong-" + testToken}, 401, "log in", ""},
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
		if !strings.Contains(body, tc.page) {
			t.Errorf("%s: GET %s is not the page with %s: %.300s", tc.name, tc.path, tc.page, body)
		}
		checkCSP(t, tc.name, resp.Header.Get("Content-Security-Policy"), body)
	}
	if resp, _ := req(t, "GET", b.url+"/compare/a", "", bearer...); resp.StatusCode != 404 {
		t.Errorf("/compare/a: %d, want 404", resp.StatusCode)
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
	if tags := strings.Count(strings.ToLower(body), "<script"); len(scripts) == 0 || len(scripts) != len(allowed) || tags != len(scripts) {
		t.Errorf("%s: %d inline scripts of %d script tags, %d hashes in the policy", name, len(scripts), tags, len(allowed))
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
