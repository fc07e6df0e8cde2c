package labels

import (
	"errors"
	"slices"
	"testing"
)

func TestNameSortsAsLuaDoes(t *testing.T) {
	t.Parallel()
	// "a.b=y" sorts before "a=x" as a string ('.' < '='), though "a" sorts
	// before "a.b" as a key: lib.lua sorts the strings, so must Name.
	if got := Name(map[string]string{"a": "x", "a.b": "y"}); got != "a.b=y,a=x" {
		t.Fatalf("Name = %q, want a.b=y,a=x", got)
	}
	if Name(nil) != "" {
		t.Fatal("the empty set has a name")
	}
}

func TestSubsets(t *testing.T) {
	t.Parallel()
	got := Subsets(map[string]string{"gpu": "a100", "region": "eu"})
	slices.Sort(got)
	want := []string{"gpu=a100", "gpu=a100,region=eu", "region=eu"}
	if !slices.Equal(got, want) {
		t.Fatalf("Subsets = %v, want %v", got, want)
	}
	if len(Subsets(map[string]string{"a": "1", "b": "2", "c": "3", "d": "4"})) != 15 {
		t.Fatal("4 labels have 15 non-empty subsets")
	}
}

func TestParseAndValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in  []string
		bad bool
	}{
		{[]string{"gpu=a100", "region=eu-west/1"}, false},
		{[]string{"gpu"}, true},
		{[]string{"gpu=a100", "gpu=h100"}, true},
		{[]string{"gpu=a,100"}, true},
		{[]string{"=x"}, true},
		{[]string{"a=1", "b=2", "c=3", "d=4", "e=5"}, true},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if (err != nil) != tt.bad || err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want bad=%v", tt.in, err, tt.bad)
		}
	}
}
