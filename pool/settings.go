package pool

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The defaults of Settings: what a pool whose settings were never written
// (or were lost with its data) uses. lib.lua's DEFAULTS holds the same.
const (
	DefaultLeaseGrace = 2 * time.Second
	DefaultQuarantine = 3
	DefaultProbe      = 10 * time.Second
	DefaultProbeMax   = time.Minute
)

// The bounds of Settings; lib.lua's BOUNDS holds the same. A grace longer
// than this keeps the leases of dead holders for longer than anyone waits.
const (
	MaxLeaseGrace      = 10 * time.Minute
	MaxQuarantineAfter = 1_000_000
	MaxProbeInterval   = 24 * time.Hour
)

// Settings are what every process using a pool must agree on. They live
// with the pool in Redis (Configure; `evalpool pool config`), and the
// pool's scripts read them there, so that two workers can never apply two
// graces or two quarantine thresholds to one pool. A zero field is its
// default.
type Settings struct {
	// LeaseGrace is how long after its deadline an expired lease is
	// reclaimed, by Reap or Acquire. It must cover the one-way delay from a
	// worker to its executors and the drift between their clocks: a
	// lease-aware executor stops the eval of a lease that was not extended,
	// and the grace makes sure it has done so before anyone else gets the
	// executor. Defaults to DefaultLeaseGrace (2 s).
	LeaseGrace time.Duration `json:"lease_grace"`
	// QuarantineAfter takes an executor out of service after this many
	// releases in a row reported it unavailable (VerdictUnavailable: refused
	// connections, timeouts, 5xx, malformed answers); a graded eval resets
	// the count. Negative: never. Defaults to DefaultQuarantine (3).
	QuarantineAfter int `json:"quarantine_after"`
	// QuarantineFailRate takes an executor out of service when at least this
	// share of its last 20 graded evals failed (a broken sandbox that
	// answers "failed" to everything). Zero: never, the default: a suite
	// whose evals all fail is not the executor's fault.
	QuarantineFailRate float64 `json:"quarantine_fail_rate"`
	// ProbeInterval is how long after its quarantine an executor is first
	// probed, and the first backoff between probes. Defaults to
	// DefaultProbe (10 s).
	ProbeInterval time.Duration `json:"probe_interval"`
	// ProbeMaxInterval caps the backoff, which doubles with every failed
	// probe. Defaults to DefaultProbeMax (1 min), or ProbeInterval if
	// longer.
	ProbeMaxInterval time.Duration `json:"probe_max_interval"`
}

func (s Settings) validate() error {
	ms := func(d time.Duration) bool { return d == 0 || d >= time.Millisecond && d%time.Millisecond == 0 }
	switch {
	case s.LeaseGrace < 0 || s.LeaseGrace > MaxLeaseGrace || !ms(s.LeaseGrace):
		return fmt.Errorf("%w: the lease grace is whole milliseconds up to %s, got %s", ErrInvalid, MaxLeaseGrace, s.LeaseGrace)
	case s.QuarantineAfter > MaxQuarantineAfter:
		return fmt.Errorf("%w: quarantine after at most %d calls, got %d", ErrInvalid, MaxQuarantineAfter, s.QuarantineAfter)
	case s.QuarantineFailRate < 0 || s.QuarantineFailRate > 1 || s.QuarantineFailRate != s.QuarantineFailRate:
		return fmt.Errorf("%w: the quarantine fail rate is a share from 0 to 1, got %g", ErrInvalid, s.QuarantineFailRate)
	case s.ProbeInterval < 0 || s.ProbeInterval > MaxProbeInterval || !ms(s.ProbeInterval):
		return fmt.Errorf("%w: the probe interval is whole milliseconds up to %s, got %s", ErrInvalid, MaxProbeInterval, s.ProbeInterval)
	case s.ProbeMaxInterval < 0 || s.ProbeMaxInterval > MaxProbeInterval || !ms(s.ProbeMaxInterval):
		return fmt.Errorf("%w: the longest probe interval is whole milliseconds up to %s, got %s", ErrInvalid, MaxProbeInterval, s.ProbeMaxInterval)
	case s.ProbeInterval > 0 && s.ProbeMaxInterval > 0 && s.ProbeMaxInterval < s.ProbeInterval:
		return fmt.Errorf("%w: the longest probe interval %s is shorter than the first, %s", ErrInvalid, s.ProbeMaxInterval, s.ProbeInterval)
	}
	return nil
}

// withDefaults is s as the pool's scripts apply it.
func (s Settings) withDefaults() Settings {
	if s.LeaseGrace == 0 {
		s.LeaseGrace = DefaultLeaseGrace
	}
	if s.QuarantineAfter == 0 {
		s.QuarantineAfter = DefaultQuarantine
	}
	if s.QuarantineAfter < 0 {
		s.QuarantineAfter = -1
	}
	if s.ProbeInterval == 0 {
		s.ProbeInterval = DefaultProbe
	}
	if s.ProbeMaxInterval == 0 {
		s.ProbeMaxInterval = DefaultProbeMax
	}
	s.ProbeMaxInterval = max(s.ProbeMaxInterval, s.ProbeInterval)
	return s
}

// The settings hash's fields, as lib.lua's setting reads them. The hash
// holds each setting as the scripts apply it: a quarantine never is 0.
const (
	fieldGrace    = "grace_ms"
	fieldAfter    = "quarantine_after"
	fieldFailRate = "fail_rate"
	fieldProbe    = "probe_ms"
	fieldProbeMax = "probe_max_ms"
)

// settingFields are the settings hash's fields, in Settings' order.
var settingFields = []string{fieldGrace, fieldAfter, fieldFailRate, fieldProbe, fieldProbeMax}

// settingBounds are each field's largest value, in its unit.
var settingBounds = map[string]float64{
	fieldGrace: float64(MaxLeaseGrace.Milliseconds()), fieldAfter: MaxQuarantineAfter, fieldFailRate: 1,
	fieldProbe: float64(MaxProbeInterval.Milliseconds()), fieldProbeMax: float64(MaxProbeInterval.Milliseconds()),
}

var (
	wholeDigits   = regexp.MustCompile(`^[0-9]+$`)
	decimalDigits = regexp.MustCompile(`^[0-9]*\.?[0-9]+$`)
)

// settingValue reads a setting's field as lib.lua's setting does: false for
// one missing, or not a value Configure writes (the pool applies the
// default): a share is decimal digits up to 1, any other whole decimal
// digits up to its bound.
func settingValue(field, s string) (float64, bool) {
	pattern := wholeDigits
	if field == fieldFailRate {
		pattern = decimalDigits
	}
	bound, known := settingBounds[field]
	if !known || len(s) > 20 || !pattern.MatchString(s) {
		return 0, false
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v > bound {
		return 0, false
	}
	return v, true
}

// Configure writes the pool's settings, all at once: every process using
// the pool applies them from its next call. A zero field is its default.
func (p *Pool) Configure(ctx context.Context, s Settings) error {
	if err := s.validate(); err != nil {
		return err
	}
	s = s.withDefaults()
	err := p.client.HSet(ctx, p.keys.Settings(),
		fieldGrace, s.LeaseGrace.Milliseconds(),
		fieldAfter, max(s.QuarantineAfter, 0),
		fieldFailRate, strconv.FormatFloat(s.QuarantineFailRate, 'g', -1, 64),
		fieldProbe, s.ProbeInterval.Milliseconds(),
		fieldProbeMax, s.ProbeMaxInterval.Milliseconds(),
	).Err()
	if err != nil {
		return fmt.Errorf("pool: configure %s: %w", p.name, scriptErr(err))
	}
	return nil
}

// Settings reads the pool's settings as its scripts apply them: a setting
// never written, or not a number, is its default.
func (p *Pool) Settings(ctx context.Context) (Settings, error) {
	vals, err := p.client.HMGet(ctx, p.keys.Settings(), settingFields...).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return Settings{}, fmt.Errorf("pool: read the settings of %s: %w", p.name, err)
	}
	num := func(i int) (float64, bool) {
		s, _ := vals[i].(string)
		return settingValue(settingFields[i], s)
	}
	var s Settings
	if v, ok := num(0); ok {
		s.LeaseGrace = time.Duration(v) * time.Millisecond
	}
	if v, ok := num(1); ok {
		s.QuarantineAfter = int(v)
		if v == 0 {
			s.QuarantineAfter = -1
		}
	}
	if v, ok := num(2); ok {
		s.QuarantineFailRate = v
	}
	if v, ok := num(3); ok {
		s.ProbeInterval = time.Duration(v) * time.Millisecond
	}
	if v, ok := num(4); ok {
		s.ProbeMaxInterval = time.Duration(v) * time.Millisecond
	}
	return s.withDefaults(), nil
}
