package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/api"
	"github.com/tokend/tokend/client"
	"github.com/tokend/tokend/signals"
)

// --ssf-webhooks measures rotations while tokend delivers security events
// (issue 19): every rotation passes through each webhook's consumer on the
// TOKENS stream, off the refresh path, and is acknowledged there without a
// request, since no security event comes of it.

// ssfWebhookBy is who sets the webhooks up, in tokend's log.
const ssfWebhookBy = "tokenbench"

// ssfPollEvery is the pause between two looks at the webhooks' backlog
// after the load: the resolution of the SSF catch-up.
const ssfPollEvery = 50 * time.Millisecond

// ssfSink is the webhooks' endpoint: a loopback HTTP server in this
// process that accepts every POST with 204 and counts them. It checks no
// signature: it stands for a receiver's cost to tokend, not a receiver.
type ssfSink struct {
	url      string
	srv      *http.Server
	requests atomic.Int64
}

func startSSFSink() (*ssfSink, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &ssfSink{url: "http://" + l.Addr().String() + "/"}
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go s.srv.Serve(l)
	return s, nil
}

func (s *ssfSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.WriteHeader(http.StatusMethodNotAllowed)
		return
	}
	// Read to the end, so the connection is reused as a receiver's would be.
	io.Copy(io.Discard, r.Body)
	s.requests.Add(1)
	w.WriteHeader(http.StatusNoContent)
}

func (s *ssfSink) close() { s.srv.Close() }

// ssfWebhooks are the webhooks set up for one run, by stream id, and
// their sink.
type ssfWebhooks struct {
	ids  []string
	sink *ssfSink
}

// addSSFWebhooks starts a sink and sets up n webhooks on t's tokend that
// POST every event type of every client to it, with the admin request
// tokenctl ssf webhooks add sends. The caller closes the sink.
func addSSFWebhooks(ctx context.Context, t loadTarget, n int, timeout time.Duration) (*ssfWebhooks, error) {
	nc, err := nats.Connect(t.url, slices.Concat(t.opts, []nats.Option{nats.Name("tokenbench"), nats.Timeout(timeout), nats.NoReconnect()})...)
	if err != nil {
		return nil, fmt.Errorf("%s: connect to %s: %w", t.name, t.url, err)
	}
	defer nc.Close()
	c := client.New(nc, t.prefix)
	sink, err := startSSFSink()
	if err != nil {
		return nil, err
	}
	w := &ssfWebhooks{sink: sink}
	for i := range n {
		req := api.SSFWebhookAddRequest{EndpointURL: sink.url, Secret: newWebhookSecret(), By: ssfWebhookBy}
		var v api.SSFStreamView
		rctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.Request(rctx, api.SubjectSSFWebhooksAdd, req, &v)
		cancel()
		if err == nil && v.StreamID == "" {
			err = errors.New("reply without stream_id")
		}
		if err != nil {
			sink.close()
			return nil, fmt.Errorf("%s: add SSF webhook %d of %d: %w", t.name, i+1, n, err)
		}
		w.ids = append(w.ids, v.StreamID)
	}
	return w, nil
}

// newWebhookSecret returns a Standard Webhooks secret as tokenctl makes
// one: whsec_ and the base64 of 256 random bits.
func newWebhookSecret() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return signals.WebhookSecretPrefix + base64.StdEncoding.EncodeToString(b[:])
}

// ssfResult is what a run's webhooks did after the load.
type ssfResult struct {
	catchUp  time.Duration
	err      error
	requests int64
}

// catchUp waits for the webhooks' delivery to have nothing pending and
// then reads the sink's count: every request was made by then.
func (w *ssfWebhooks) catchUp(ctx context.Context, c *client.Client, timeout time.Duration, since time.Time) ssfResult {
	took, err := ssfCatchUp(ctx, c, w.ids, timeout, since, catchUpLimit)
	return ssfResult{catchUp: took, err: err, requests: w.sink.requests.Load()}
}

// ssfCatchUp asks tokend for the backlog of each stream in ids (admin
// streams get, which measures it when asked, as tokenctl ssf streams show
// shows it) until none has an event pending, and returns the time from
// since. tokend's tokend_ssf_lag_events says the same, but is measured
// only every 15 s: it would show a backlog up to 15 s late, or a stale 0.
// A stream once caught up is not asked again: the load has stopped, so no
// event comes after.
func ssfCatchUp(ctx context.Context, c *client.Client, ids []string, timeout time.Duration, since time.Time, limit time.Duration) (time.Duration, error) {
	behind := slices.Clone(ids)
	for {
		var still, why []string
		for _, id := range behind {
			pending, err := ssfPending(ctx, c, id, timeout)
			switch {
			case errors.Is(err, client.ErrTemporarilyUnavailable) && ctx.Err() == nil:
				still, why = append(still, id), append(why, fmt.Sprintf("%s: %v", id, err))
			case err != nil:
				return 0, fmt.Errorf("stream %s: %w", id, err)
			case pending == nil:
				still, why = append(still, id), append(why, id+": backlog unknown")
			case *pending > 0:
				still, why = append(still, id), append(why, fmt.Sprintf("%s: %d events pending", id, *pending))
			}
		}
		now := time.Now()
		switch {
		case len(still) == 0:
			return now.Sub(since), nil
		case now.Sub(since) > limit:
			return 0, fmt.Errorf("%d of %d webhooks still behind after %v (%s)", len(still), len(ids), limit, strings.Join(why, "; "))
		}
		behind = still
		sleep(ctx, ssfPollEvery)
		if err := ctx.Err(); err != nil {
			return 0, err
		}
	}
}

// ssfPending returns the events stream id's delivery has not had taken
// yet; nil when tokend could not tell (its consumer not made yet).
func ssfPending(ctx context.Context, c *client.Client, id string, timeout time.Duration) (*uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var v api.SSFStreamView
	if err := c.Request(ctx, api.SubjectSSFStreamsGet, api.SSFStreamRequest{StreamID: id}, &v); err != nil {
		return nil, err
	}
	if v.Pending == nil {
		return nil, nil
	}
	return &v.Pending.Events, nil
}
