// Command tokenbench measures tokend: rotations per second, latency,
// errors, CPU and memory under a load of K workers, optionally against
// tokenbaseline, the minimal pipeline, or spread over several tokend
// instances on one nats-server:
//
//	go run ./cmd/tokenbench [--baseline [--rounds N]] [-k N] [--duration D] [flags]
//
// It builds the servers it starts from the source tree around the working
// directory. Until issue 18 it was the bench command of tokenctl, with the
// same flags and code; it moved out so that tokenctl holds only what an
// operator runs. docs/benchmarks.md shows its numbers.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/cmd/internal/cli"
)

func main() {
	// SIGINT/SIGTERM stop the started servers and remove their
	// directories; once the context is done, stop restores the default so
	// a second Ctrl-C kills a stuck run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// env is what a run needs besides its options: its streams and the
// connection flags, which matter for --target (a started server gets its
// own address).
type env struct {
	stdout, stderr  io.Writer
	json            bool
	natsURL, prefix string
	timeout         time.Duration
	auth            cli.Auth
	natsOpts        []nats.Option // from auth, with --target
}

// defaultNATSURL is where --target looks without --nats-url: the
// deployment tokenctl talks to, by the same variables.
func defaultNATSURL() string {
	return cmp.Or(os.Getenv("TOKENCTL_NATS_URL"), os.Getenv("NATS_URL"), "nats://127.0.0.1:4222")
}

// run is main without the process: it returns the exit status (0 ok,
// 1 failure, 2 usage error). Cancelling ctx interrupts the run.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	e := &env{stdout: stdout, stderr: stderr}
	var o benchOptions
	fs := flag.NewFlagSet("tokenbench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.declare(fs)
	fs.StringVar(&e.natsURL, "nats-url", defaultNATSURL(), "with --target: the NATS server `URL` (default $TOKENCTL_NATS_URL, else $NATS_URL, else nats://127.0.0.1:4222)")
	fs.StringVar(&e.prefix, "prefix", client.DefaultPrefix, "subject prefix `P` of tokend: given to a started one, used by --target")
	fs.DurationVar(&e.timeout, "timeout", 10*time.Second, "give up on a request, or on connecting, after `D`")
	fs.BoolVar(&e.json, "json", false, "print the report as one JSON object")
	e.auth.Declare(fs)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage(stdout, fs)
		return 0
	case err != nil:
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case e.timeout <= 0:
		err = errors.New("--timeout must be positive")
	default:
		err = o.check()
	}
	if err == nil && o.target {
		e.natsOpts, err = e.auth.Options() // only --target logs in to a deployment
	}
	if err != nil {
		fmt.Fprintf(stderr, "tokenbench: %v\nRun 'tokenbench -h' for usage.\n", err)
		return 2
	}
	if err := bench(ctx, e, &o); err != nil {
		fmt.Fprintf(stderr, "tokenbench: %s%s\n", err, hint(e, err))
		return 1
	}
	return 0
}

// hint says what a failure likely means, for the errors that do not say it
// themselves.
func hint(e *env, err error) string {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Sprintf(" (is tokend running with subject prefix %q on %s?)", e.prefix, e.natsURL)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf(" (no answer within --timeout %v)", e.timeout)
	case errors.Is(err, context.Canceled):
		return " (interrupted)"
	}
	return ""
}

func usage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: tokenbench %s\n\n%s\n\nFlags:\n", synopsis, help)
	cli.PrintFlags(w, fs)
}
