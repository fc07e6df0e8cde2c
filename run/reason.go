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
		var b bytes.Buffer
		if json.Compact(&b, r.Output) != nil {
			b.Reset()
			b.Write(r.Output)
		}
		why = "output " + b.String()
	default:
		why = last
	}
	return clip(strings.Join(strings.Fields(why), " "), MaxReason)
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
