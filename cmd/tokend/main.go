// Command tokend runs the refresh-token lifecycle service: by default with an
// embedded NATS server, all state under ./data.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	cfg, err := parseConfig(args, lookupEnv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "tokend:", err)
		return 2
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(cfg.LogLevel)); err != nil {
		fmt.Fprintln(os.Stderr, "tokend: --log-level:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
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
