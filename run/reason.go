package run

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxReason bounds Reason, in characters, so that it fits beside an eval's
// key on one line of a summary or a table.
const MaxReason = 160

// Reason says in one line why an eval failed its grading or errored: its
// error; else its grader's exit code and the last line of its stderr; else
// the start of its output; else the last line of its stderr. It is empty
// for any other status, and for a failure that says nothing.
func (r Record) Reason() string {
	if r.Status != Failed && r.Status != Errored {
		return ""
	}
	last := lastLine(r.Stderr)
	var why string
	switch {
	case r.Error != "":
		why = r.Error
		if last != "" && !strings.Contains(why, last) {
			why += "; stderr ends: " + last
		}
	case r.ExitCode != nil:
		why = fmt.Sprintf("exit code %d", *r.ExitCode)
		if last != "" {
			why += ": " + last
		}
	case len(r.Output) > 0 && string(r.Output) != "null":
		why = "output " + compact(r.Output)
	default:
		why = last
	}
	return clip(strings.Join(strings.Fields(why), " "), MaxReason)
}

// compact is raw on one line, without the escapes of <, > and & that
// storing it as JSON added (its objects' keys sorted). Raw that is not JSON
// is as it is.
func compact(raw json.RawMessage) string {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	var b bytes.Buffer
	e := json.NewEncoder(&b)
	e.SetEscapeHTML(false)
	if d.Decode(&v) != nil || e.Encode(v) != nil {
		return string(raw)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// lastLine is the last line of s that holds more than blanks.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// clip cuts s to n characters, the last an ellipsis when it cut.
func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
