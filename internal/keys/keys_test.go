package keys

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestNames pins every key to its literal name: the names are a stored
// format, and a change to one must fail here before it strands a
// deployment's data.
func TestNames(t *testing.T) {
	p, r := ForPool("p1"), ForRun("r1")
	tests := []struct{ got, want string }{
		{Instances, "evalpool:instances"},
		{Runs, "evalpool:runs"},
		{OpenRuns("p1"), "evalpool:runs:open:p1"},
		{p.Executors(), "evalpool:{p1}:executors"},
		{p.Available(), "evalpool:{p1}:available"},
		{p.Leases(), "evalpool:{p1}:leases"},
		{p.Deadlines(), "evalpool:{p1}:deadlines"},
		{p.Holders(), "evalpool:{p1}:holders"},
		{p.Draining(), "evalpool:{p1}:draining"},
		{p.Fence(), "evalpool:{p1}:fence"},
		{p.Epoch(), "evalpool:{p1}:epoch"},
		{p.Instances(), "evalpool:{p1}:instances"},
		{p.Waiters(), "evalpool:{p1}:waiters"},
		{p.Waiting(), "evalpool:{p1}:waiting"},
		{p.Quarantine(), "evalpool:{p1}:quarantine"},
		{p.Avoid(), "evalpool:{p1}:avoid"},
		{p.Labelled(), "evalpool:{p1}:labelled"},
		{p.Cancelled(), "evalpool:{p1}:cancelled"},
		{p.History(), "evalpool:{p1}:history"},
		{p.Outlived(), "evalpool:{p1}:outlived"},
		{p.Clock(), "evalpool:{p1}:clock"},
		{p.LabelledFor("gpu=a100,zone=eu"), "evalpool:{p1}:labelled:gpu=a100,zone=eu"},
		{p.WaitersFor("gpu=a100,zone=eu"), "evalpool:{p1}:waiters:gpu=a100,zone=eu"},
		{p.Wake("w1"), "evalpool:{p1}:wake:w1"},
		{p.WakePrefix(), "evalpool:{p1}:wake:"},
		{p.Reaped(), "evalpool:{p1}:reaped"},
		{p.Scratch("x"), "evalpool:{p1}:scratch:x"},
		{p.Pattern(), "evalpool:{p1}:*"},
		{ForPool(`a*?[b]\`).Pattern(), `evalpool:{a\*\?\[b\]\\}:*`},
		{r.Done(), "evalpool:run:{r1}:done"},
		{r.Counts(), "evalpool:run:{r1}:counts"},
		{r.Running(), "evalpool:run:{r1}:running"},
		{r.Meta(), "evalpool:run:{r1}:meta"},
		{r.Evals(), "evalpool:run:{r1}:evals"},
		{r.Ended(), "evalpool:run:{r1}:ended"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("key %q, want %q", tt.got, tt.want)
		}
	}
}

// TestScriptOrder checks Script against the scripts themselves: each reads
// a key by its place in KEYS, so the order is theirs.
func TestScriptOrder(t *testing.T) {
	header := regexp.MustCompile(`(?m)^--\s+KEYS\[(\d+)\]\s+(\w+)`)
	local := regexp.MustCompile(`(?m)^\s*(?:local )?K_(\w+) = (?:KEYS|keys)\[(\d+)\]$`)
	tests := []struct {
		file   string
		prefix string
		script []string
		locals bool
	}{
		{"../../lua/lib.lua", "evalpool:{p1}:", ForPool("p1").Script(), true},
		{"../../lua/run_finish.lua", "evalpool:run:{r1}:", ForRun("r1").Script(), false},
		{"../../lua/run_reopen.lua", "evalpool:run:{r1}:", ForRun("r1").Script(), false},
	}
	for _, tt := range tests {
		b, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for i, m := range header.FindAllStringSubmatch(string(b), -1) {
			if m[1] != strconv.Itoa(i+1) {
				t.Fatalf("%s: KEYS[%s] comes %d-th", tt.file, m[1], i+1)
			}
			want = append(want, tt.prefix+m[2])
		}
		if len(want) == 0 || !slices.Equal(tt.script, want) {
			t.Errorf("%s: Script() = %q, want %q", tt.file, tt.script, want)
		}
		if !tt.locals {
			continue
		}
		ms := local.FindAllStringSubmatch(string(b), -1)
		if len(ms) != len(want) {
			t.Errorf("%s: %d K_ locals, %d keys in its header", tt.file, len(ms), len(want))
		}
		for _, m := range ms {
			i, _ := strconv.Atoi(m[2])
			if i < 1 || i > len(tt.script) || tt.script[i-1] != tt.prefix+strings.ToLower(m[1]) {
				t.Errorf("%s: K_%s = KEYS[%s], which Script() names otherwise", tt.file, m[1], m[2])
			}
		}
	}
}
