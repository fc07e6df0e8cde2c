// Package composetest is the smoke test of the docker-compose stack: it
// brings the stack of docker-compose.yml up on a Docker Engine, runs evals
// through the dashboard's API while it kills a worker, cuts another off the
// network and restarts Redis, then checks that no executor was double-booked
// or lost, that Prometheus scrapes the stack, and that `docker compose stop`
// lets the workers return their executors. Its test is under the build tag
// compose: `make compose-test` runs it (it needs the images, see
// deploy/images/build.sh).
package composetest
