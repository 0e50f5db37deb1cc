package api

import "time"

// workerIdleTimeout is how long a worker waits for the next request before
// it exits, so the pool shrinks back after a burst.
const workerIdleTimeout = 10 * time.Second

// workers runs each job on a goroutine of its own, reusing goroutines that
// have finished one: a fresh goroutine per request grew its stack on every
// refresh (the signature and the JSON need more than the initial 8 KiB),
// 2% of tokend's CPU under load. Concurrency is bounded by the caller.
type workers struct {
	jobs        chan func() // unbuffered: a send succeeds only when a worker is idle
	idleTimeout time.Duration
}

func newWorkers(idleTimeout time.Duration) *workers {
	return &workers{jobs: make(chan func()), idleTimeout: idleTimeout}
}

// run hands job to an idle worker, or starts one.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
	default:
		go w.work(job)
	}
}

func (w *workers) work(job func()) {
	idle := time.NewTimer(w.idleTimeout)
	defer idle.Stop()
	for {
		job()
		idle.Reset(w.idleTimeout)
		select {
		case job = <-w.jobs:
		case <-idle.C:
			return
		}
	}
}
