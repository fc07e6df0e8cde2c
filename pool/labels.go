package pool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/evalpool/evalpool/labels"
	"github.com/evalpool/evalpool/lua"
)

// MaxLabels is how many labels an executor may carry (labels.Max).
const MaxLabels = labels.Max

// ErrUnservable means no registered executor has every label an eval
// requires: it would wait for ever, so it is refused.
var ErrUnservable = errors.New("pool: no registered executor has the required labels")

// ErrEmpty means no executor is registered in the pool at all. An eval
// submitted there waits until one is, and the likelier cause is a misspelt
// pool name or the wrong Redis (or DB): producers refuse it unless told the
// executors are to come.
var ErrEmpty = errors.New("pool: no executor registered")

// ValidateLabels checks labels (labels.Validate), as ErrInvalid.
func ValidateLabels(ls map[string]string) error {
	if err := labels.Validate(ls); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return nil
}

// CanServe reports whether some registered executor (available, leased or
// quarantined) has every label in require: an eval that none could serve
// should be refused when it is submitted, not left waiting.
func (p *Pool) CanServe(ctx context.Context, require map[string]string) (bool, error) {
	if err := ValidateLabels(require); err != nil {
		return false, err
	}
	required := labels.Name(require)
	if required == "" {
		n, err := p.client.HLen(ctx, p.keys.Executors()).Result()
		if err != nil {
			return false, fmt.Errorf("pool: can %s serve any eval: %w", p.name, err)
		}
		return n > 0, nil
	}
	// A pool an older release wrote keeps its label sets elsewhere.
	if err := p.current(ctx); err != nil {
		return false, err
	}
	sets, err := p.client.HKeys(ctx, p.keys.Labelled()).Result()
	if err != nil {
		return false, fmt.Errorf("pool: can %s serve %s: %w", p.name, required, err)
	}
	return slices.ContainsFunc(sets, func(set string) bool { return labels.Serves(set, required) }), nil
}

// RelabelOutcome says what Relabel did.
type RelabelOutcome string

// Relabel outcomes.
const (
	Relabeled RelabelOutcome = "relabeled"
	Unchanged RelabelOutcome = "unchanged"
)

// Relabel replaces a registered executor's labels (none, for an empty
// map). An available executor serves its new label sets at once; a leased
// one from its release. An unknown URL is ErrUnknownExecutor.
func (p *Pool) Relabel(ctx context.Context, rawURL string, ls map[string]string) (RelabelOutcome, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	if err := ValidateLabels(ls); err != nil {
		return "", err
	}
	if ls == nil {
		ls = map[string]string{}
	}
	b, err := json.Marshal(ls)
	if err != nil {
		return "", fmt.Errorf("%w: labels of %s: %w", ErrInvalid, u, err)
	}
	if err := p.current(ctx); err != nil {
		return "", err
	}
	out, err := lua.Label.Run(ctx, p.client, p.script, u, string(b)).Text()
	if err != nil {
		return "", fmt.Errorf("pool: relabel %s: %w", u, scriptErr(err))
	}
	if out == "unknown" {
		return "", fmt.Errorf("%w: %s", ErrUnknownExecutor, u)
	}
	return RelabelOutcome(out), nil
}
