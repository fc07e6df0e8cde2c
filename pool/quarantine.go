package pool

import (
	"context"
	"fmt"

	"github.com/evalpool/evalpool/lua"
)

// QuarantineOutcome says what Quarantine or ReturnToService did.
type QuarantineOutcome string

// Quarantine outcomes.
const (
	// Quarantined: out of service now, or at its release when leased.
	Quarantined QuarantineOutcome = "quarantined"
	// AlreadyQuarantined: it was out of service already.
	AlreadyQuarantined QuarantineOutcome = "already"
	// Returned: back in service, to the oldest waiter it can serve first
	// (at its release, when leased).
	Returned QuarantineOutcome = "returned"
	// NotQuarantined: it was in service; nothing changed.
	NotQuarantined QuarantineOutcome = "not_quarantined"
)

// Quarantine reasons the pool gives on its own; an operator's is Operator.
const (
	ReasonUnavailable = "unavailable" // QuarantineAfter failed calls in a row
	ReasonFailRate    = "fail_rate"   // QuarantineFailRate of its recent evals failed
	ReasonOperator    = "operator"
)

// Quarantine takes an executor out of service: it is never handed out
// until ReturnToService brings it back (a health probe returns only those
// quarantined as ReasonUnavailable). A leased executor keeps serving its eval and goes out of service at
// its release. An unknown URL is ErrUnknownExecutor.
func (p *Pool) Quarantine(ctx context.Context, rawURL, reason string) (QuarantineOutcome, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	out, _, err := p.quarantine(ctx, u, "on", reason)
	if err != nil {
		return "", err
	}
	if out == Quarantined {
		// The metric's reason is one of a closed set; the operator's own
		// words go to the log and the executor's status.
		label := reason
		if label != ReasonUnavailable && label != ReasonFailRate {
			label = ReasonOperator
		}
		p.metrics.quarantines.WithLabelValues(p.name, label).Inc()
		p.log.Warn().Str("pool", p.name).Str("executor", u).Str("reason", reason).Msg("executor quarantined")
	}
	return out, nil
}

// ReturnToService ends an executor's quarantine at once, whatever its
// health: an operator's override.
func (p *Pool) ReturnToService(ctx context.Context, rawURL string) (QuarantineOutcome, error) {
	u, err := ParseURL(rawURL)
	if err != nil {
		return "", err
	}
	return p.returnToService(ctx, u, "", "operator")
}

func (p *Pool) returnToService(ctx context.Context, u, since, by string) (QuarantineOutcome, error) {
	out, reason, err := p.quarantine(ctx, u, "off", since)
	if err != nil {
		return "", err
	}
	if out == Returned {
		p.metrics.returns.WithLabelValues(p.name, by).Inc()
		p.log.Warn().Str("pool", p.name).Str("executor", u).Str("quarantined_for", reason).Str("by", by).Msg("executor back in service")
	}
	return out, nil
}

func (p *Pool) quarantine(ctx context.Context, u, action, arg string) (QuarantineOutcome, string, error) {
	if err := p.current(ctx); err != nil {
		return "", "", err
	}
	vals, err := lua.Quarantine.Run(ctx, p.client, p.script, u, action, arg).StringSlice()
	if err != nil {
		return "", "", fmt.Errorf("pool: quarantine %s %s: %w", action, u, scriptErr(err))
	}
	if vals[0] == "unknown" {
		return "", "", fmt.Errorf("%w: %s", ErrUnknownExecutor, u)
	}
	return QuarantineOutcome(vals[0]), vals[1], nil
}

// ProbeQuarantined health-checks the quarantined executors whose probe is
// due, at most limit of them, and returns to service those that answer. Each
// due executor is claimed in Redis first, so that of all the workers running
// this at once exactly one probes it, and its next probe is put off by a
// backoff that doubles from Settings.ProbeInterval up to
// Settings.ProbeMaxInterval. probe is
// the health check (GET /healthz, for the reference executor); it returns
// nil when the executor is healthy. It returns the URLs returned to service.
func (p *Pool) ProbeQuarantined(ctx context.Context, limit int, probe func(ctx context.Context, url string) error) ([]string, error) {
	if err := p.current(ctx); err != nil {
		return nil, err
	}
	claimed, err := lua.Probe.Run(ctx, p.client, p.script, limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("pool: claim due probes of %s: %w", p.name, scriptErr(err))
	}
	var returned []string
	for i := 0; i+1 < len(claimed); i += 2 {
		u, since := claimed[i], claimed[i+1]
		if err := probe(ctx, u); err != nil {
			p.metrics.probes.WithLabelValues(p.name, "unhealthy").Inc()
			p.log.Debug().Str("pool", p.name).Str("executor", u).Err(err).Msg("quarantined executor still unhealthy")
			continue
		}
		p.metrics.probes.WithLabelValues(p.name, "healthy").Inc()
		out, err := p.returnToService(ctx, u, since, "probe")
		if err != nil {
			return returned, err
		}
		if out == Returned {
			returned = append(returned, u)
		}
	}
	return returned, nil
}
