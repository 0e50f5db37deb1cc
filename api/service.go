package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// Version is reported in service discovery.
const Version = "0.1.0"

// requestTimeout bounds one command end to end, so a stalled store answers
// temporarily_unavailable instead of hanging the caller.
const requestTimeout = 5 * time.Second

// maxInFlight bounds concurrently handled requests per instance; past it the
// subscription stops reading and NATS buffers, which is the backpressure.
const maxInFlight = 1024

// Service is the NATS face of tokend.
type Service struct {
	Tokens *events.Service
	Access *AccessTokens
	Log    *slog.Logger
	Now    func() time.Time

	inFlight sync.WaitGroup
	slots    chan struct{}
	micro    micro.Service
}

// Start registers the micro service "tokens" with its endpoints under prefix.
func (s *Service) Start(nc *nats.Conn, prefix string) error {
	s.slots = make(chan struct{}, maxInFlight)
	svc, err := micro.AddService(nc, micro.Config{
		Name:        "tokens",
		Version:     Version,
		Description: "refresh-token rotation with replay detection",
	})
	if err != nil {
		return err
	}
	s.micro = svc
	endpoints := []struct {
		name, subject string
		handle        func(context.Context, []byte) (any, error)
	}{
		{"issue", prefix + ".cmd.issue", s.issue},
		{"refresh", prefix + ".cmd.refresh", s.refresh},
		{"revoke", prefix + ".cmd.revoke", s.revoke},
		{"keys", prefix + ".keys", s.keys},
	}
	for _, ep := range endpoints {
		if err := svc.AddEndpoint(ep.name, s.async(ep.name, ep.handle), micro.WithEndpointSubject(ep.subject)); err != nil {
			svc.Stop()
			return fmt.Errorf("endpoint %s: %w", ep.name, err)
		}
	}
	// Subscriptions are sent asynchronously; flushing makes the endpoints
	// reachable before Start reports the service up.
	return nc.FlushTimeout(10 * time.Second)
}

// Stop stops taking requests and waits for those in flight.
func (s *Service) Stop() {
	if s.micro != nil {
		s.micro.Stop()
	}
	s.inFlight.Wait()
}

// async runs each request on its own goroutine: a subscription delivers
// messages one at a time, and one slow family must not hold up the others.
func (s *Service) async(name string, handle func(context.Context, []byte) (any, error)) micro.HandlerFunc {
	return func(req micro.Request) {
		s.slots <- struct{}{}
		s.inFlight.Add(1)
		go func() {
			defer func() { <-s.slots; s.inFlight.Done() }()
			defer func() {
				if p := recover(); p != nil {
					s.Log.Error("handler panic", "endpoint", name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
					respondError(req, domain.Errorf(domain.EServerError, "internal error"))
				}
			}()
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			defer cancel()
			reply, err := handle(ctx, req.Data())
			if err != nil {
				s.logFailure(name, err)
				respondError(req, err)
				return
			}
			data, _ := json.Marshal(reply)
			req.Respond(data)
		}()
	}
}

func (s *Service) logFailure(endpoint string, err error) {
	switch domain.ErrorCode(err) {
	case domain.EServerError:
		s.Log.Error("command failed", "endpoint", endpoint, "err", err)
	case domain.EUnavailable:
		s.Log.Warn("command unavailable", "endpoint", endpoint, "err", err)
	}
}

func respondError(req micro.Request, err error) {
	body := errorReply(err)
	data, _ := json.Marshal(body)
	req.Error(strconv.Itoa(httpStatus(body.Error)), body.Description, data)
}

func (s *Service) issue(ctx context.Context, data []byte) (any, error) {
	req, err := ParseIssue(data)
	if err != nil {
		return nil, err
	}
	g, err := s.Tokens.Issue(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.tokenReply(g)
}

func (s *Service) refresh(ctx context.Context, data []byte) (any, error) {
	req, err := ParseRefresh(data)
	if err != nil {
		return nil, err
	}
	g, err := s.Tokens.Refresh(ctx, req)
	if err != nil {
		return nil, err
	}
	return s.tokenReply(g)
}

func (s *Service) tokenReply(g events.Grant) (TokenReply, error) {
	at, err := s.Access.Mint(g, s.Now())
	if err != nil {
		return TokenReply{}, fmt.Errorf("sign access token: %w", err)
	}
	return TokenReply{
		RefreshToken: g.Token.Value(), FamilyID: g.Family.ID, TokenType: "Bearer",
		AccessToken: at, ExpiresIn: int64(s.Access.TTL() / time.Second), Scope: domain.ScopeString(g.Scope),
		RefreshTokenExpiresAt: rfc3339(g.Family.ExpiresAt()), Seq: g.Seq,
	}, nil
}

func (s *Service) revoke(ctx context.Context, data []byte) (any, error) {
	in, err := ParseRevoke(data)
	if err != nil {
		return nil, err
	}
	var (
		n   int
		seq uint64
	)
	switch {
	case in.RefreshToken != nil:
		n, seq, err = s.Tokens.RevokeToken(ctx, *in.RefreshToken, in.Reason, in.Context)
	case in.FamilyID != nil:
		n, seq, err = s.Tokens.RevokeFamily(ctx, *in.FamilyID, in.Reason, in.Context)
	default:
		err = domain.Errorf(domain.EInvalidRequest, "revoking by subject or client_id needs the read model, which this build does not have yet")
	}
	if err != nil {
		return nil, err
	}
	return RevokeReply{RevokedFamilies: n, Seq: seq}, nil
}

func (s *Service) keys(_ context.Context, _ []byte) (any, error) {
	return json.RawMessage(s.Access.JWKS()), nil
}
