package refexec

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/evalpool/evalpool/executor"
)

// EnvResultFile is the environment variable that names, for an --exec
// command, a file it may write its result to: when it did, that is its
// result, whatever its stdout says.
const EnvResultFile = "EVALPOOL_RESULT_FILE"

// DefaultTail is how many bytes of the end of each of a command's stdout
// (its result taken out) and stderr go with its result by default: enough
// for a traceback, little enough to keep with every eval.
const DefaultTail = 2 << 10

// errRanOutOfTime is the cause a command is stopped with a little before
// the caller's deadline, so that its errored result reaches the caller.
var errRanOutOfTime = errors.New("the command ran out of time")

// answerMargin is how long before the caller's deadline, time left being
// left, a command is stopped for time: long enough for its answer to
// travel back before the caller gives up.
func answerMargin(left time.Duration) time.Duration { return min(left/10, time.Second) }

// executorExit reports whether a command's exit code says the executor
// could not run it, not that the eval failed: the leader's 125 (no
// go-ahead), the shell's 126 (not executable) and 127 (not found).
func executorExit(code int) bool { return code >= 125 && code <= 127 }

// runCommand runs the --exec command with the spec on stdin, and makes its
// result: the file named by EnvResultFile if the command wrote one, else
// the last line of its stdout that is a JSON object (else its whole stdout,
// a result printed over several lines); the rest of stdout and stderr is
// its log, whose ends go with the result. A command that exits other than
// 0, runs out of time, or gives no result makes the eval errored: the
// eval's fault, answered as a result. The executor's own failures (the
// command could not start or be found) are errors: a 500. At the
// deadline, a preemption or the lease's end the whole process group is
// killed, so a command that forked children leaves nothing running. Nothing
// answered quotes the command line: it may carry a key (GRADER_API_KEY=...
// cmd), and the answer travels to the worker's log, the eval's stored
// result and the run page.
func (s *Server) runCommand(ctx context.Context, req executor.Request) (executor.Result, error) {
	runCtx := ctx
	if d, ok := ctx.Deadline(); ok {
		var stop context.CancelFunc
		runCtx, stop = context.WithDeadlineCause(ctx, d.Add(-answerMargin(time.Until(d))), errRanOutOfTime)
		defer stop()
	}
	dir, err := os.MkdirTemp("", "evalpool-result-")
	if err != nil {
		return executor.Result{}, fmt.Errorf("a directory for the --exec command's result: %w", err)
	}
	defer os.RemoveAll(dir)
	resultFile := filepath.Join(dir, "result.json")
	cmd := command(runCtx, s.opts.Exec)
	cmd.Stdin = strings.NewReader(string(req.Spec))
	cmd.Env = append(cmd.Environ(), fmt.Sprintf("EVALPOOL_EVAL_ID=%s", req.EvalID), fmt.Sprintf("EVALPOOL_FENCE=%d", req.Fence), EnvResultFile+"="+resultFile)
	cmd.WaitDelay = time.Second
	stdout, stderr := &tailWriter{n: executor.MaxAnswerBytes}, &tailWriter{n: max(s.opts.Tail, stderrTail)}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	started := time.Now()
	forget, err := s.groups.start(cmd)
	if err != nil {
		return executor.Result{}, fmt.Errorf("start the --exec command: %w", err)
	}
	err = cmd.Wait()
	forget()
	if err != nil && ctx.Err() != nil {
		return executor.Result{}, context.Cause(ctx)
	}
	tail := func(b []byte) string { return executor.Tail(string(b), max(s.opts.Tail, 0)) }
	errored := func(code *int, log []byte, format string, args ...any) executor.Result {
		return executor.Result{Status: executor.StatusErrored, Diagnostics: executor.Diagnostics{Error: fmt.Sprintf(format, args...), ExitCode: code, Stdout: tail(log), Stderr: tail(stderr.bytes())}}
	}
	var exit *exec.ExitError
	switch {
	case err != nil && runCtx.Err() != nil:
		s.count(func(st *Stats) { st.Timeout++ })
		return errored(nil, stdout.bytes(), "timed out after %s: killed", time.Since(started).Round(time.Millisecond)), nil
	case errors.As(err, &exit) && executorExit(exit.ExitCode()):
		return executor.Result{}, fmt.Errorf("--exec command failed (%s): it could not be run; stderr ends: %s", exitStatus(err), oneLine(executor.Tail(string(stderr.bytes()), stderrTail)))
	case errors.As(err, &exit):
		var code *int
		if c := exit.ExitCode(); c >= 0 {
			code = &c
		}
		return errored(code, stdout.bytes(), "%s", exitStatus(err)), nil
	case err != nil && !errors.Is(err, exec.ErrWaitDelay):
		return executor.Result{}, fmt.Errorf("--exec command failed (%s); stderr ends: %s", exitStatus(err), oneLine(executor.Tail(string(stderr.bytes()), stderrTail)))
	}
	// Exited 0 (a child holding its stdout open past WaitDelay too: what
	// it wrote by then counts).
	raw, log, err := resultOf(resultFile, stdout.bytes())
	if err != nil {
		return errored(nil, log, "no result: %v", err), nil
	}
	if raw == nil {
		return errored(nil, log, "no result: no line of its stdout is a JSON object, and it wrote no $%s", EnvResultFile), nil
	}
	res, err := executor.ParseResult(raw)
	if err != nil {
		return errored(nil, log, "its result is not one: %s", strings.TrimPrefix(err.Error(), executor.ErrBadAnswer.Error()+": ")), nil
	}
	res.Stdout, res.Stderr = tail(log), tail(stderr.bytes())
	if b, err := json.Marshal(res); err != nil || len(b) > executor.MaxAnswerBytes {
		return errored(nil, log, "its result is over the %d bytes an answer may hold", executor.MaxAnswerBytes), nil
	}
	return res, nil
}

// resultOf finds a command's result: the file it wrote, else the last line
// of its stdout that is a JSON object, else its whole stdout if that is one
// JSON object. log is stdout less the result. raw is nil when there is
// none; err when the file could not be read.
func resultOf(file string, stdout []byte) (raw, log []byte, err error) {
	b, err := os.ReadFile(file)
	switch {
	case err == nil && len(bytes.TrimSpace(b)) > 0:
		return b, stdout, nil
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return nil, stdout, fmt.Errorf("$%s: %w", EnvResultFile, err)
	}
	end := len(stdout)
	for end > 0 {
		start := bytes.LastIndexByte(stdout[:end], '\n') + 1
		line := bytes.TrimSpace(stdout[start:end])
		if len(line) > 0 && line[0] == '{' && json.Valid(line) {
			return line, append(stdout[:start:start], stdout[min(end+1, len(stdout)):]...), nil
		}
		end = max(start-1, 0)
	}
	if whole := bytes.TrimSpace(stdout); len(whole) > 0 && whole[0] == '{' && json.Valid(whole) {
		return whole, nil, nil
	}
	return nil, stdout, nil
}

// stderrTail is how much of a command's stderr the error of a command the
// executor could not run quotes: the end, where a program says why it
// stopped, short enough to be seen whole in the worker's error, which
// quotes the start of an answer (executor.Snippet).
const stderrTail = 100

// exitStatus says how a command ended ("exit status 2", "signal: killed"),
// or the kind of failure, without the command line.
func exitStatus(err error) string {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ProcessState.String()
	}
	return "it could not be waited for"
}

// oneLine is s on one line, "(empty)" when there is nothing.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return "(empty)"
	}
	return s
}

// tailWriter keeps the last n bytes written, so a chatty command cannot
// exhaust memory. It holds up to 2n, and cuts back to n when past that, so
// a write costs its own length on average.
type tailWriter struct {
	b []byte
	n int
}

func (t *tailWriter) Write(p []byte) (int, error) {
	if len(p) >= t.n {
		t.b = append(t.b[:0], p[len(p)-t.n:]...)
		return len(p), nil
	}
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.n {
		t.b = append(t.b[:0], t.b[len(t.b)-t.n:]...)
	}
	return len(p), nil
}

// bytes is the last n bytes written.
func (t *tailWriter) bytes() []byte { return t.b[max(0, len(t.b)-t.n):] }
