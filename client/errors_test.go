package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/tokend/tokend/client"
)

func TestSentinelsMatchCodes(t *testing.T) {
	for code, sentinel := range map[string]error{
		"invalid_request": client.ErrInvalidRequest, "invalid_grant": client.ErrInvalidGrant,
		"invalid_scope": client.ErrInvalidScope, "invalid_target": client.ErrInvalidTarget,
		"not_found": client.ErrNotFound, "temporarily_unavailable": client.ErrTemporarilyUnavailable,
		"server_error": client.ErrServerError, "invalid_client": client.ErrInvalidClient,
		"invalid_dpop_proof": client.ErrInvalidDPoPProof, "use_dpop_nonce": client.ErrUseDPoPNonce,
	} {
		err := fmt.Errorf("wrapped: %w", &client.Error{Code: code})
		if !errors.Is(err, sentinel) {
			t.Errorf("%s does not match its sentinel", code)
		}
		for _, other := range []error{client.ErrInvalidGrant, client.ErrTemporarilyUnavailable} {
			if other != sentinel && errors.Is(err, other) {
				t.Errorf("%s matches %v", code, other)
			}
		}
	}
	if errors.Is(&client.Error{Code: "unauthorized"}, client.ErrInvalidGrant) {
		t.Error("an unknown code matches a sentinel")
	}
	if !errors.Is(client.ErrLostRotation, client.ErrInvalidGrant) {
		t.Error("a lost rotation is not invalid_grant")
	}
}

func TestTerminalAndTransient(t *testing.T) {
	for _, tc := range []struct {
		err                 error
		terminal, transient bool
	}{
		{nil, false, false},
		{errors.New("x"), false, false},
		{context.Canceled, false, false},
		{&client.Error{Code: "invalid_grant"}, true, false},
		{&client.Error{Code: "invalid_request"}, true, false},
		{&client.Error{Code: "invalid_client"}, true, false},
		{&client.Error{Code: "invalid_scope"}, false, false},
		{&client.Error{Code: "invalid_target"}, false, false},
		{&client.Error{Code: "not_found"}, false, false},
		{&client.Error{Code: "invalid_dpop_proof"}, false, false},
		{&client.Error{Code: "use_dpop_nonce"}, false, false},
		{&client.Error{Code: "temporarily_unavailable"}, false, true},
		{&client.Error{Code: "server_error"}, false, true},
		{fmt.Errorf("tokens.cmd.refresh: %w", nats.ErrNoResponders), false, true},
		{fmt.Errorf("tokens.cmd.refresh: %w", nats.ErrTimeout), false, true},
		{fmt.Errorf("tokens.cmd.refresh: %w", context.DeadlineExceeded), false, true},
		{nats.ErrConnectionClosed, false, true},
		{nats.ErrDisconnected, false, true},
		{nats.ErrConnectionReconnecting, false, true},
		{nats.ErrReconnectBufExceeded, false, true},
		{fmt.Errorf("%w: %w", client.ErrStoreUnavailable, nats.ErrTimeout), false, true},
		{client.ErrNoSession, true, false},
		{client.ErrLostRotation, true, false},
		{client.ErrBadReply, false, false},
		{client.ErrClosed, false, false},
	} {
		if got := client.Terminal(tc.err); got != tc.terminal {
			t.Errorf("Terminal(%v) = %v", tc.err, got)
		}
		if got := client.Transient(tc.err); got != tc.transient {
			t.Errorf("Transient(%v) = %v", tc.err, got)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	err := fmt.Errorf("refresh: %w", &client.Error{Code: "temporarily_unavailable", RetryAfterMs: 350})
	if got := client.RetryAfter(err); got != 350*time.Millisecond {
		t.Fatalf("RetryAfter = %v", got)
	}
	if got := client.RetryAfter(nats.ErrTimeout); got != 0 {
		t.Fatalf("RetryAfter(timeout) = %v", got)
	}
}
