// Command tokend runs the refresh-token lifecycle service: by default with an
// embedded NATS server, all state under ./data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/tokend/tokend/api"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run is main without the process: it returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, lookupEnv, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errVersion):
		fmt.Fprintln(stdout, api.VersionLine("tokend"))
		return 0
	case err != nil:
		fmt.Fprintln(stderr, "tokend:", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintln(stderr, "tokend: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	for _, name := range unknownEnv(os.Environ()) {
		log.Warn("ignoring an environment variable that names no flag (see tokend -h)", "name", name)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app, err := Start(ctx, cfg, log)
	if err != nil {
		log.Error("tokend failed to start", "err", err)
		return 1
	}
	<-ctx.Done()
	log.Info("shutting down")
	app.Stop()
	log.Info("stopped")
	return 0
}
