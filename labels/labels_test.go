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

func TestServes(t *testing.T) {
	t.Parallel()
	const set = "gpu=a100,region=eu"
	tests := []struct {
		require map[string]string
		want    bool
	}{
		{nil, true},
		{map[string]string{"gpu": "a100"}, true},
		{map[string]string{"region": "eu", "gpu": "a100"}, true},
		{map[string]string{"gpu": "a10"}, false},
		{map[string]string{"gpu": "a100", "zone": "1"}, false},
	}
	for _, tt := range tests {
		if got := Serves(set, Name(tt.require)); got != tt.want {
			t.Errorf("Serves(%q, %v) = %v, want %v", set, tt.require, got, tt.want)
		}
	}
	subsets := Subsets(set)
	slices.Sort(subsets)
	if want := []string{"gpu=a100", "gpu=a100,region=eu", "region=eu"}; !slices.Equal(subsets, want) {
		t.Fatalf("Subsets(%q) = %v, want %v", set, subsets, want)
	}
	for _, s := range subsets {
		if !Serves(set, s) {
			t.Errorf("%q does not serve its subset %q", set, s)
		}
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
