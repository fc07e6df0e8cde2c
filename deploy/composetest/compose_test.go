//go:build compose

package composetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/evalpool/evalpool/api"
	"github.com/evalpool/evalpool/pool"
	"github.com/evalpool/evalpool/run"
	"github.com/evalpool/evalpool/tasks"
)

// The test's settings, from the environment; each zero value is documented.
const (
	// envCompose is the Compose command. Defaults to "docker compose" when
	// the plugin answers, else "docker-compose".
	envCompose = "EVALPOOL_COMPOSE"
	// envFile is the compose file. Defaults to the repository's
	// docker-compose.yml; relative paths in it are the repository's.
	envFile = "EVALPOOL_COMPOSE_FILE"
	// envEvals is the size of the run. Defaults to 600: at 300 ms an eval
	// on three executors it outlasts the faults.
	envEvals = "EVALPOOL_COMPOSE_EVALS"
	// envProject is the Compose project. Defaults to evalpool-composetest,
	// so that the test never touches a user's stack.
	envProject = "EVALPOOL_COMPOSE_PROJECT"
)

const (
	dashboardURL  = "http://127.0.0.1:8080"
	prometheusURL = "http://127.0.0.1:9091"
	// rulesFile is where the compose file mounts the alert rules, inside
	// the Prometheus container.
	rulesFile = "/etc/prometheus/evalpool-alerts.yml"
	// secretsDir is where the stack's services read the secrets the
	// `secrets` service made.
	secretsDir = "/var/lib/evalpool/secrets"
	// partitionHold is how long a worker stays cut off: past its leases'
	// TTL and grace, so that the pool reclaims what it held.
	partitionHold = tasks.DefaultLeaseTTL + pool.DefaultLeaseGrace + 8*time.Second
	// stopEvalSleep is how long each eval of the stop step runs: longer
	// than any worker's --shutdown-timeout, so that a stopping worker
	// cancels them and returns their executors.
	stopEvalSleep = 120 * time.Second
	// healthyWithin bounds the wait for every service healthy after up.
	healthyWithin = 4 * time.Minute
)

// TestComposeStack brings the stack up and runs it through the issue's
// steps in order; a failing step prints its services' last log lines.
func TestComposeStack(t *testing.T) {
	s := setup(t)
	steps := []struct {
		name  string
		bound time.Duration
		run   func(context.Context) error
	}{
		{"build", 20 * time.Minute, s.build},
		{"up", 15 * time.Minute, s.up},
		{"secrets", 3 * time.Minute, s.secrets},
		{"run under faults", 15 * time.Minute, s.runUnderFaults},
		{"pool after the run", 2 * time.Minute, s.poolAfterRun},
		{"prometheus", 3 * time.Minute, s.prometheus},
		{"stop", 3 * time.Minute, s.stop},
		{"down", 3 * time.Minute, s.down},
	}
	for _, st := range steps {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), st.bound)
		err := st.run(ctx)
		cancel()
		if err != nil {
			s.fail(st.name, err)
		}
		t.Logf("step %s: %s", st.name, time.Since(start).Round(100*time.Millisecond))
	}
	fmt.Println("compose-test: ok " + s.fig.String())
}

// stack is one Compose project of the test.
type stack struct {
	t       *testing.T
	root    string
	cmd     []string // the Compose command
	file    string
	compose []string // the command, then the flags every call of the project takes
	project string
	env     []string
	token   string
	evals   int
	client  *http.Client
	second  *stack // a second project of the same file, for its secrets
	fig     figures
	start   time.Time
}

// figures are the numbers of the summary line.
type figures struct {
	compose                          string
	up, runTime, stopTime            time.Duration
	size, passed, failed, errored    int
	cancelled, retries, resultLines  int
	overlaps, served, lost, followRe int
	targets                          string
	rules                            int
	secretsDiffer, hostRefused       bool
	workerRestarted                  bool
	stopReturned                     int
	total                            time.Duration
}

func (f figures) String() string {
	return fmt.Sprintf("compose=%q up=%s secrets_differ_between_projects=%t foreign_host_refused=%t evals=%d passed=%d failed=%d errored=%d cancelled=%d retries=%d results=%d run=%s "+
		"faults=kill(worker-1 restarted_by_docker=%t),redis-restart,partition(worker-2 %s) follow_reconnects=%d served=%d overlaps=%d lost=%d "+
		"prometheus_targets=%s alert_rules=%d stop=%s returned=%d total=%s",
		f.compose, f.up.Round(time.Second), f.secretsDiffer, f.hostRefused, f.size, f.passed, f.failed, f.errored, f.cancelled, f.retries, f.resultLines, f.runTime.Round(time.Second),
		f.workerRestarted, partitionHold, f.followRe, f.served, f.overlaps, f.lost,
		f.targets, f.rules, f.stopTime.Round(100*time.Millisecond), f.stopReturned, f.total.Round(time.Second))
}

func setup(t *testing.T) *stack {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	file := os.Getenv(envFile)
	if file == "" {
		file = filepath.Join(root, "docker-compose.yml")
	}
	project := os.Getenv(envProject)
	if project == "" {
		project = "evalpool-composetest"
	}
	evals := 600
	if v := os.Getenv(envEvals); v != "" {
		if evals, err = strconv.Atoi(v); err != nil || evals < 10 {
			t.Fatalf("%s=%q: want a number of evals, at least 10", envEvals, v)
		}
	}
	cmd := strings.Fields(os.Getenv(envCompose))
	if len(cmd) == 0 {
		cmd = []string{"docker-compose"}
		if exec.Command("docker", "compose", "version").Run() == nil {
			cmd = []string{"docker", "compose"}
		}
	}
	// The stack's own secrets, as a user's stack has them: none from the
	// environment.
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "EVALPOOL_AUTH_TOKEN=") || strings.HasPrefix(kv, "EVALPOOL_EXECUTOR_SECRET=")
	})
	s := &stack{
		t:       t,
		root:    root,
		cmd:     cmd,
		file:    file,
		compose: append(slices.Clone(cmd), "-p", project, "-f", file, "--project-directory", root, "--profile", "metrics"),
		project: project,
		env:     env,
		evals:   evals,
		client:  &http.Client{Timeout: 10 * time.Second},
		start:   time.Now(),
	}
	version, _ := s.run(context.Background(), "version", "--short")
	s.fig.compose = strings.Join(cmd, " ") + " " + strings.TrimSpace(version)
	t.Logf("compose: %s, project %s, file %s", s.fig.compose, project, file)
	s.second = s.other(project + "-second")
	// Stacks a killed run of the test left behind.
	for _, st := range []*stack{s, s.second} {
		if _, err := st.run(context.Background(), "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
			t.Fatalf("compose down before the test: %v", err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		s.client.CloseIdleConnections()
		for _, st := range []*stack{s, s.second} {
			if _, err := st.run(ctx, "down", "-v", "--remove-orphans", "--timeout", "5"); err != nil {
				t.Errorf("compose down: %v", err)
			}
			if left := st.leftovers(ctx); left != "" {
				t.Errorf("left behind: %s", left)
			}
		}
	})
	return s
}

// other is the same compose file as another project, as a second clone of
// the repository would run it.
func (s *stack) other(project string) *stack {
	o := *s
	o.project = project
	o.compose = append(slices.Clone(s.cmd), "-p", project, "-f", s.file, "--project-directory", s.root)
	o.second = nil
	return &o
}

// stepError names the services whose logs tell why a step failed.
type stepError struct {
	services []string
	err      error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

func blame(err error, services ...string) error {
	if err == nil {
		return nil
	}
	return &stepError{services: services, err: err}
}

// fail prints the step's one line and the last log lines of the services it
// names (of every service when it names none), then ends the test.
func (s *stack) fail(step string, err error) {
	s.t.Helper()
	var se *stepError
	var services []string
	if errors.As(err, &se) {
		services = se.services
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	logs, _ := s.run(ctx, append([]string{"logs", "--no-color", "--tail", "25"}, services...)...)
	fmt.Printf("compose-test: FAIL at %s: %v\n", step, err)
	s.t.Fatalf("step %s: %v\nlast log lines of %s:\n%s", step, err, orAll(services), logs)
}

func orAll(services []string) string {
	if len(services) == 0 {
		return "every service"
	}
	return strings.Join(services, ", ")
}

// run runs a Compose command of the project and returns its output; an
// error carries the output's last lines.
func (s *stack) run(ctx context.Context, args ...string) (string, error) {
	c := exec.CommandContext(ctx, s.compose[0], append(slices.Clone(s.compose[1:]), args...)...)
	c.Dir = s.root
	c.Env = s.env
	return output(c)
}

func docker(ctx context.Context, args ...string) (string, error) {
	return output(exec.CommandContext(ctx, "docker", args...))
}

// output runs c and returns its stdout; an error carries the last lines
// of both outputs.
func output(c *exec.Cmd) (string, error) {
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %w: %s", strings.Join(c.Args[:min(len(c.Args), 8)], " "), err,
			lastLines(stdout.String()+"\n"+stderr.String(), 8))
	}
	return stdout.String(), nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// container is what the test reads of a service's container.
type container struct {
	id, service, status, health string
	exitCode, restarts          int
	networks                    []string
}

// containers reads the project's containers by service; one-off containers
// (compose run) are not the stack's.
func (s *stack) containers(ctx context.Context) (map[string]container, error) {
	ids, err := docker(ctx, "ps", "-aq", "--filter", "label=com.docker.compose.project="+s.project)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(ids) == "" {
		return map[string]container{}, nil
	}
	out, err := docker(ctx, append([]string{"inspect"}, strings.Fields(ids)...)...)
	if err != nil {
		return nil, err
	}
	var inspected []struct {
		ID     string `json:"Id"`
		Config struct {
			Labels map[string]string
		}
		State struct {
			Status   string
			ExitCode int
			Health   *struct{ Status string }
		}
		RestartCount    int
		NetworkSettings struct {
			Networks map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal([]byte(out), &inspected); err != nil {
		return nil, fmt.Errorf("docker inspect: %w", err)
	}
	cs := map[string]container{}
	for _, in := range inspected {
		if strings.EqualFold(in.Config.Labels["com.docker.compose.oneoff"], "true") {
			continue
		}
		c := container{id: in.ID, service: in.Config.Labels["com.docker.compose.service"], status: in.State.Status,
			exitCode: in.State.ExitCode, restarts: in.RestartCount}
		if in.State.Health != nil {
			c.health = in.State.Health.Status
		}
		for n := range in.NetworkSettings.Networks {
			c.networks = append(c.networks, n)
		}
		cs[c.service] = c
	}
	return cs, nil
}

func (s *stack) container(ctx context.Context, service string) (container, error) {
	cs, err := s.containers(ctx)
	if err != nil {
		return container{}, err
	}
	c, ok := cs[service]
	if !ok {
		return container{}, blame(fmt.Errorf("no container for service %s", service), service)
	}
	return c, nil
}

// waitFor calls check every half second until it returns nil, or returns
// its last error when ctx ends: the last one from before ctx ended, which
// says what was awaited.
func waitFor(ctx context.Context, check func() error) error {
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		err := check()
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return last
		case <-tick.C:
		}
	}
}

// build builds the stack's one image, timed apart from up.
func (s *stack) build(ctx context.Context) error {
	_, err := s.run(ctx, "build")
	return err
}

// oneShot are the services that do their work and exit.
var oneShot = map[string]bool{"secrets": true, "register": true}

// up is the user's `docker compose up -d --build`, then every service
// healthy (running when it has no health check) and the one-shot services
// exited 0, within healthyWithin.
func (s *stack) up(ctx context.Context) error {
	start := time.Now()
	if _, err := s.run(ctx, "up", "-d", "--build"); err != nil {
		return blame(err, "register")
	}
	out, err := s.run(ctx, "config", "--services")
	if err != nil {
		return err
	}
	services := strings.Fields(out)
	ctx, cancel := context.WithTimeout(ctx, healthyWithin)
	defer cancel()
	err = waitFor(ctx, func() error {
		cs, err := s.containers(ctx)
		if err != nil {
			return err
		}
		var waiting []string
		var why []string
		for _, name := range services {
			c, ok := cs[name]
			switch {
			case !ok:
				why = append(why, name+": no container")
			case oneShot[name]:
				if c.status == "exited" && c.exitCode == 0 {
					continue
				}
				why = append(why, fmt.Sprintf("%s: %s, last exit %d, %d restarts", name, c.status, c.exitCode, c.restarts))
			case c.status != "running":
				why = append(why, fmt.Sprintf("%s: %s (exit %d)", name, c.status, c.exitCode))
			case c.health != "" && c.health != "healthy":
				why = append(why, name+": "+c.health)
			default:
				continue
			}
			waiting = append(waiting, name)
		}
		if len(why) > 0 {
			return blame(fmt.Errorf("not up after %s: %s", time.Since(start).Round(time.Second), strings.Join(why, "; ")), waiting...)
		}
		return nil
	})
	s.fig.up = time.Since(start)
	return err
}

// secrets reads the dashboard's token the way the README tells a user to,
// checks that a page's request naming a foreign Host is refused even with
// it, and that a second project of the same file (a second clone) made
// secrets of its own.
func (s *stack) secrets(ctx context.Context) error {
	mine, err := s.readSecrets(ctx)
	if err != nil {
		return blame(err, "secrets")
	}
	s.token = mine["dashboard-token"]
	if len(s.token) < 32 {
		return blame(fmt.Errorf("the stack's dashboard token has %d bytes", len(s.token)), "secrets")
	}
	if err := s.api(ctx, http.MethodGet, "/api/v1/runs", nil, nil, http.StatusOK); err != nil {
		return blame(fmt.Errorf("the dashboard refuses the token its stack made: %w", err), "dashboard")
	}
	// A DNS rebinding page: its own name as Host and Origin, the token
	// (were it known) as a bearer.
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, dashboardURL+"/api/v1/runs", strings.NewReader(`{"evals":[{"spec":{}}]}`))
	if err != nil {
		return err
	}
	req.Host = "attacker.example:8080"
	req.Header.Set("Origin", "http://attacker.example:8080")
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return blame(err, "dashboard")
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		return blame(fmt.Errorf("POST /api/v1/runs with Host attacker.example:8080 and the token: %s, want 403", resp.Status), "dashboard")
	}
	s.fig.hostRefused = true

	if _, err := s.second.run(ctx, "up", "secrets"); err != nil {
		return blame(err, "secrets")
	}
	theirs, err := s.second.readSecrets(ctx)
	if err != nil {
		return err
	}
	for name, v := range mine {
		if theirs[name] == v {
			return fmt.Errorf("%s: projects %s and %s have the same one", name, s.project, s.second.project)
		}
	}
	if _, err := s.second.run(ctx, "down", "-v"); err != nil {
		return err
	}
	s.fig.secretsDiffer = true
	return nil
}

// readSecrets reads the secrets volume of the project through a
// container of its `secrets` service.
func (s *stack) readSecrets(ctx context.Context) (map[string]string, error) {
	secrets := map[string]string{}
	for _, name := range []string{"dashboard-token", "executor-secret"} {
		out, err := s.run(ctx, "run", "--rm", "--no-deps", "-T", "--entrypoint", "cat", "secrets", secretsDir+"/"+name)
		if err != nil {
			return nil, fmt.Errorf("project %s: %w", s.project, err)
		}
		secrets[name] = strings.TrimSpace(out)
	}
	return secrets, nil
}

// api sends a request to the dashboard's API with the token and decodes a
// JSON answer into out.
func (s *stack) api(ctx context.Context, method, path string, body, out any, want int) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, dashboardURL+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != want {
		return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, lastLines(string(b), 3))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// submit submits a run of n evals with the spec each. Each also carries
// an answer and the one expected for the stack's grader (executor-3): every
// tenth answer is wrong.
func (s *stack) submit(ctx context.Context, name string, n int, spec map[string]any, timeout time.Duration) error {
	req := api.RunRequest{Name: name}
	if timeout > 0 {
		secs := int64(timeout / time.Second)
		req.TimeoutS = &secs
	}
	for i := range n {
		sp := map[string]any{"case": i, "answer": strconv.Itoa(i * i), "expected": strconv.Itoa(i * i)}
		if i%10 == 9 {
			sp["answer"] = "wrong"
		}
		for k, v := range spec {
			sp[k] = v
		}
		b, err := json.Marshal(sp)
		if err != nil {
			return err
		}
		req.Evals = append(req.Evals, api.RunEval{Spec: b})
	}
	var created api.RunCreated
	if err := s.api(ctx, http.MethodPost, "/api/v1/runs", req, &created, http.StatusCreated); err != nil {
		return blame(err, "dashboard")
	}
	if created.Size != n {
		return fmt.Errorf("run %s created with %d evals, sent %d", name, created.Size, n)
	}
	return nil
}

func (s *stack) progress(ctx context.Context, name string) (run.Counts, error) {
	var c run.Counts
	err := s.api(ctx, http.MethodGet, "/api/v1/runs/"+name+"/progress", nil, &c, http.StatusOK)
	return c, err
}

// waitProgress waits until the run meets ok; the API may fail meanwhile
// (Redis restarting): it is asked again.
func (s *stack) waitProgress(ctx context.Context, name, what string, ok func(run.Counts) bool) error {
	err := waitFor(ctx, func() error {
		c, err := s.progress(ctx, name)
		if err != nil {
			return err
		}
		if !ok(c) {
			return fmt.Errorf("run %s: waiting for %s: %+v", name, what, c)
		}
		return nil
	})
	return blame(err, "worker-1", "worker-2", "dashboard")
}

// followed is what following a run's results saw.
type followed struct {
	ended      map[string]string // eval ID: its end
	reconnects int
	err        error
}

// follow reads the run's results stream to its end, as a user's `run
// results --follow` does: a stream cut short (the dashboard lost Redis) is
// followed again.
func (s *stack) follow(ctx context.Context, name string) followed {
	f := followed{ended: map[string]string{}}
	client := &http.Client{} // a stream lasts as long as the run
	defer client.CloseIdleConnections()
	for {
		complete, err := s.followOnce(ctx, client, name, f.ended)
		if complete {
			return f
		}
		if ctx.Err() != nil {
			f.err = fmt.Errorf("following run %s: %w (last: %v)", name, ctx.Err(), err)
			return f
		}
		f.reconnects++
		select {
		case <-ctx.Done():
		case <-time.After(time.Second): // the dashboard's Redis is coming back
		}
	}
}

func (s *stack) followOnce(ctx context.Context, client *http.Client, name string, ended map[string]string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, dashboardURL+"/api/v1/runs/"+name+"/results?follow=1", nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+s.token)
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("results: %s", resp.Status)
	}
	total := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			api.ResultLine
			Error string `json:"error"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return false, fmt.Errorf("results line %q: %w", sc.Text(), err)
		}
		if line.Error != "" {
			return false, errors.New(line.Error)
		}
		if line.Ended() {
			ended[line.EvalID] = line.Status
		}
		total++
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	// A stream that ends without an error line ends with the run.
	return total > 0, nil
}

// runUnderFaults submits the run, and while it runs kills worker-1,
// restarts Redis and cuts worker-2 off the network for longer than a lease;
// then it follows the run to its end and checks that the counts add up.
func (s *stack) runUnderFaults(ctx context.Context) error {
	name := fmt.Sprintf("composetest-%d", time.Now().Unix())
	start := time.Now()
	if err := s.submit(ctx, name, s.evals, nil, 0); err != nil {
		return err
	}
	fctx, fcancel := context.WithCancel(ctx)
	defer fcancel()
	followDone := make(chan followed, 1)
	go func() { followDone <- s.follow(fctx, name) }()

	share := func(p int) func(run.Counts) bool {
		return func(c run.Counts) bool { return c.Done()*100 >= c.Size*p }
	}
	if err := s.waitProgress(ctx, name, "5% ended", share(5)); err != nil {
		return err
	}
	w1, err := s.container(ctx, "worker-1")
	if err != nil {
		return err
	}
	if _, err := docker(ctx, "kill", "-s", "KILL", w1.id); err != nil {
		return blame(err, "worker-1")
	}
	s.t.Logf("killed worker-1 at %s", time.Since(start).Round(100*time.Millisecond))

	if err := s.waitProgress(ctx, name, "15% ended", share(15)); err != nil {
		return err
	}
	// Docker takes a kill for a stop by hand: unless-stopped does not
	// restart the container. Its supervisor (here, the test) does.
	if c, err := s.container(ctx, "worker-1"); err != nil {
		return err
	} else if c.status != "running" {
		if _, err := docker(ctx, "start", c.id); err != nil {
			return blame(err, "worker-1")
		}
		s.t.Logf("started worker-1 again at %s", time.Since(start).Round(100*time.Millisecond))
	}
	redis, err := s.container(ctx, "redis")
	if err != nil {
		return err
	}
	if _, err := docker(ctx, "restart", "-t", "10", redis.id); err != nil {
		return blame(err, "redis")
	}
	if err := waitFor(ctx, func() error {
		c, err := s.container(ctx, "redis")
		if err == nil && c.health != "healthy" {
			err = blame(fmt.Errorf("redis restarted but %s", c.health), "redis")
		}
		return err
	}); err != nil {
		return err
	}
	s.t.Logf("restarted redis at %s", time.Since(start).Round(100*time.Millisecond))

	if err := s.waitProgress(ctx, name, "25% ended", share(25)); err != nil {
		return err
	}
	w2, err := s.container(ctx, "worker-2")
	if err != nil {
		return err
	}
	if len(w2.networks) != 1 {
		return fmt.Errorf("worker-2 is on networks %v, want one", w2.networks)
	}
	network := w2.networks[0]
	if _, err := docker(ctx, "network", "disconnect", network, w2.id); err != nil {
		return blame(err, "worker-2")
	}
	s.t.Logf("cut worker-2 off %s at %s for %s", network, time.Since(start).Round(100*time.Millisecond), partitionHold)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(partitionHold): // the fault itself: longer than a lease
	}
	if _, err := docker(ctx, "network", "connect", "--alias", "worker-2", network, w2.id); err != nil {
		return blame(err, "worker-2")
	}
	s.t.Logf("reconnected worker-2 at %s", time.Since(start).Round(100*time.Millisecond))

	if err := s.waitProgress(ctx, name, "every eval ended", func(c run.Counts) bool {
		return c.Done() == c.Size && c.Running == 0 && c.Pending == 0
	}); err != nil {
		return err
	}
	s.fig.runTime = time.Since(start)
	var f followed
	select {
	case f = <-followDone:
	case <-ctx.Done():
		return blame(fmt.Errorf("the results stream did not end with the run: %w", ctx.Err()), "dashboard")
	}
	if f.err != nil {
		return blame(f.err, "dashboard")
	}
	s.fig.followRe = f.reconnects

	var sum run.Summary
	if err := s.api(ctx, http.MethodGet, "/api/v1/runs/"+name, nil, &sum, http.StatusOK); err != nil {
		return blame(err, "dashboard")
	}
	s.fig.size, s.fig.passed, s.fig.failed, s.fig.errored, s.fig.cancelled, s.fig.retries =
		sum.Size, sum.Passed, sum.Failed, sum.Errored, sum.Cancelled, sum.Retries
	s.fig.resultLines = len(f.ended)
	switch {
	case sum.Size != s.evals:
		return fmt.Errorf("summary: size %d, submitted %d", sum.Size, s.evals)
	case sum.Passed+sum.Failed+sum.Errored+sum.Cancelled != sum.Size || sum.Running != 0 || sum.Pending != 0:
		return fmt.Errorf("summary: counts do not add up to the size: %+v", sum.Counts)
	case sum.Cancelled != 0:
		return fmt.Errorf("summary: %d evals cancelled, none was", sum.Cancelled)
	case len(f.ended) != sum.Size:
		return fmt.Errorf("results stream: %d evals ended, the summary has %d", len(f.ended), sum.Size)
	}
	tally := map[string]int{}
	for _, status := range f.ended {
		tally[status]++
	}
	if tally[run.Passed] != sum.Passed || tally[run.Failed] != sum.Failed {
		return fmt.Errorf("results stream: %v, summary: %+v", tally, sum.Counts)
	}
	c, err := s.container(ctx, "worker-1")
	if err != nil {
		return err
	}
	s.fig.workerRestarted = c.status == "running" && c.restarts > w1.restarts
	return nil
}

// poolAfterRun checks the executors' own counts of overlaps and the pool's
// invariants, both from inside the stack.
func (s *stack) poolAfterRun(ctx context.Context) error {
	cs, err := s.containers(ctx)
	if err != nil {
		return err
	}
	var executors []string
	for name := range cs {
		if strings.HasPrefix(name, "executor-") {
			executors = append(executors, name)
		}
	}
	slices.Sort(executors)
	if len(executors) == 0 {
		return errors.New("no executor service")
	}
	s.fig.overlaps, s.fig.served = 0, 0
	for _, name := range executors {
		st, err := s.executorStats(ctx, cs[name].id)
		if err != nil {
			return blame(fmt.Errorf("%s: /v1/stats: %w", name, err), name)
		}
		s.fig.overlaps += st.Overlaps
		s.fig.served += st.Served
		if st.Overlaps != 0 {
			return blame(fmt.Errorf("%s counted %d overlaps: an executor was double-booked", name, st.Overlaps), name, "worker-1", "worker-2")
		}
	}
	// Every executor back in the pool once the last release landed.
	var status pool.Status
	if err := waitFor(ctx, func() error {
		out, err := s.run(ctx, "exec", "-T", "dashboard", "evalpool", "pool", "status", "--json")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &status); err != nil {
			return fmt.Errorf("pool status --json: %w", err)
		}
		if status.Counts[pool.StateAvailable] != len(executors) {
			return fmt.Errorf("pool status: %v, want %d available", status.Counts, len(executors))
		}
		return nil
	}); err != nil {
		return blame(err, "worker-1", "worker-2")
	}
	s.fig.lost = status.Counts[pool.StateLost]
	if out, err := s.run(ctx, "exec", "-T", "dashboard", "evalpool", "pool", "check"); err != nil {
		return blame(fmt.Errorf("pool check: %w: %s", err, lastLines(out, 5)), "worker-1", "worker-2")
	}
	return nil
}

type executorStats struct {
	Served   int `json:"served"`
	Overlaps int `json:"overlaps"`
}

// executorStats reads GET /v1/stats inside the executor's container: the
// image has no HTTP client but the shell's /dev/tcp, and the executors
// publish no port.
func (s *stack) executorStats(ctx context.Context, id string) (executorStats, error) {
	const script = `exec 3<>/dev/tcp/127.0.0.1/9001 && printf 'GET /v1/stats HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && cat <&3`
	out, err := docker(ctx, "exec", id, "bash", "-c", script)
	if err != nil {
		return executorStats{}, err
	}
	_, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok || !strings.HasPrefix(out, "HTTP/1.0 200") && !strings.HasPrefix(out, "HTTP/1.1 200") {
		return executorStats{}, fmt.Errorf("answer %q", lastLines(out, 3))
	}
	var st executorStats
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return executorStats{}, fmt.Errorf("answer %q: %w", body, err)
	}
	return st, nil
}

// prometheus checks the shipped alert rules with promtool and waits until
// Prometheus has every target of deploy/prometheus.yml up and the rules
// loaded.
func (s *stack) prometheus(ctx context.Context) error {
	if _, err := s.run(ctx, "exec", "-T", "prometheus", "promtool", "check", "rules", rulesFile); err != nil {
		return blame(fmt.Errorf("promtool check rules: %w", err), "prometheus")
	}
	err := waitFor(ctx, func() error {
		var targets struct {
			Data struct {
				ActiveTargets []struct {
					Labels    map[string]string `json:"labels"`
					Health    string            `json:"health"`
					LastError string            `json:"lastError"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := getJSON(ctx, s.client, prometheusURL+"/api/v1/targets", &targets); err != nil {
			return err
		}
		var up, all []string
		for _, tg := range targets.Data.ActiveTargets {
			name := tg.Labels["job"] + "/" + tg.Labels["instance"]
			all = append(all, name+"="+tg.Health+" "+tg.LastError)
			if tg.Health == "up" {
				up = append(up, name)
			}
		}
		s.fig.targets = fmt.Sprintf("%d/%d", len(up), len(all))
		if len(all) < 3 || len(up) != len(all) {
			return fmt.Errorf("prometheus targets: %s", strings.Join(all, "; "))
		}
		return nil
	})
	if err != nil {
		return blame(err, "prometheus", "dashboard")
	}
	var rules struct {
		Data struct {
			Groups []struct {
				Rules []struct {
					Name string `json:"name"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	if err := getJSON(ctx, s.client, prometheusURL+"/api/v1/rules", &rules); err != nil {
		return blame(err, "prometheus")
	}
	s.fig.rules = 0
	for _, g := range rules.Data.Groups {
		s.fig.rules += len(g.Rules)
	}
	if s.fig.rules == 0 {
		return blame(errors.New("prometheus loaded no alert rule"), "prometheus")
	}
	return nil
}

func getJSON(ctx context.Context, client *http.Client, url string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// stop runs `docker compose stop` while every executor runs an eval longer
// than the workers' shutdown timeout: each worker must cancel its evals and
// return their executors before it exits, within its stop grace period.
// Redis is then started alone to read the pool.
func (s *stack) stop(ctx context.Context) error {
	cs, err := s.containers(ctx)
	if err != nil {
		return err
	}
	executors := 0
	for name := range cs {
		if strings.HasPrefix(name, "executor-") {
			executors++
		}
	}
	name := fmt.Sprintf("composetest-stop-%d", time.Now().Unix())
	spec := map[string]any{"sleep_ms": stopEvalSleep.Milliseconds(), "grade": "passed"}
	if err := s.submit(ctx, name, executors, spec, 2*stopEvalSleep); err != nil {
		return err
	}
	if err := s.waitProgress(ctx, name, "every executor running an eval", func(c run.Counts) bool {
		return c.Running == executors
	}); err != nil {
		return err
	}
	start := time.Now()
	if _, err := s.run(ctx, "stop"); err != nil {
		return blame(err, "worker-1", "worker-2")
	}
	s.fig.stopTime = time.Since(start)
	after, err := s.containers(ctx)
	if err != nil {
		return err
	}
	for _, w := range []string{"worker-1", "worker-2"} {
		// 137: Docker killed it when its stop grace period ran out.
		if c := after[w]; c.status != "exited" || c.exitCode == 137 {
			return blame(fmt.Errorf("%s: %s, exit %d after compose stop (%s): its stop grace period is shorter than its shutdown",
				w, c.status, c.exitCode, s.fig.stopTime.Round(100*time.Millisecond)), w)
		}
	}
	if _, err := s.run(ctx, "start", "redis"); err != nil {
		return blame(err, "redis")
	}
	var status pool.Status
	if err := waitFor(ctx, func() error {
		out, err := s.run(ctx, "run", "--rm", "--no-deps", "-T", "dashboard", "pool", "status", "--json")
		if err != nil {
			return err
		}
		return json.Unmarshal([]byte(out), &status)
	}); err != nil {
		return blame(err, "redis")
	}
	s.fig.stopReturned = status.Counts[pool.StateAvailable]
	if status.Counts[pool.StateAvailable] != executors {
		return blame(fmt.Errorf("after compose stop the pool has %v, want all %d executors available: a worker exited holding leases",
			status.Counts, executors), "worker-1", "worker-2")
	}
	return nil
}

// down is `docker compose down -v`, after which nothing of the project is
// left.
func (s *stack) down(ctx context.Context) error {
	if _, err := s.run(ctx, "down", "-v", "--remove-orphans"); err != nil {
		return err
	}
	if left := s.leftovers(ctx); left != "" {
		return errors.New("left behind after down -v: " + left)
	}
	s.fig.total = time.Since(s.start)
	return nil
}

// leftovers lists the project's containers, networks and volumes.
func (s *stack) leftovers(ctx context.Context) string {
	label := "label=com.docker.compose.project=" + s.project
	var left []string
	for _, what := range [][]string{
		{"ps", "-aq", "--filter", label},
		{"network", "ls", "-q", "--filter", label},
		{"volume", "ls", "-q", "--filter", label},
	} {
		out, err := docker(ctx, what...)
		if err != nil {
			left = append(left, err.Error())
			continue
		}
		if ids := strings.Fields(out); len(ids) > 0 {
			left = append(left, fmt.Sprintf("%s: %s", what[0], strings.Join(ids, " ")))
		}
	}
	return strings.Join(left, "; ")
}
