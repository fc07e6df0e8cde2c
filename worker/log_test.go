package worker

import (
	"bytes"
	"errors"
	"testing"

	"github.com/rs/zerolog"
)

// An attempt's log lines are those of a sub-logger with its fields: the
// same fields in the same order, after the worker logger's own, at every
// level, and nothing at a level that is off.
func TestAttemptLogIsASubLogger(t *testing.T) {
	var got, want bytes.Buffer
	base := zerolog.New(&got).Level(zerolog.InfoLevel).With().Str("component", "worker").Logger()
	ref := zerolog.New(&want).Level(zerolog.InfoLevel).With().Str("component", "worker").Logger()
	a := attemptLog{log: &base, eval: "e-1", executor: "http://x/e/0", fence: 7, attempt: 2}
	sub := ref.With().Str("eval", "e-1").Str("executor", "http://x/e/0").Int64("fence", 7).Int("attempt", 2).Logger()
	err := errors.New("boom")
	a.Debug().Bool("reentered", true).Msg("leased")
	sub.Debug().Bool("reentered", true).Msg("leased")
	a.Info().Str("status", "passed").Msg("done")
	sub.Info().Str("status", "passed").Msg("done")
	a.Warn().Err(err).Msg("failed")
	sub.Warn().Err(err).Msg("failed")
	a.Error().Err(err).Msg("busy")
	sub.Error().Err(err).Msg("busy")
	if got.String() != want.String() {
		t.Fatalf("attempt log wrote\n%s\na sub-logger writes\n%s", got.String(), want.String())
	}
	if bytes.Count(got.Bytes(), []byte("\n")) != 3 {
		t.Fatalf("want 3 lines (debug is off), got\n%s", got.String())
	}
}
