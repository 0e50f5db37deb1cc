package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/tokend/tokend/domain"
)

// ErrConflict means another writer appended to the family first: the
// expected-last-subject-sequence fence refused the append.
var ErrConflict = errors.New("family changed concurrently")

// JetStream error codes that mean the fence refused an append: a wrong last
// subject sequence, and its replicated-stream variant.
const (
	errCodeWrongLastSequence   = 10071
	errCodeWrongLastSeqCluster = 10164
)

// lostAckCheckTimeout bounds the look-up that resolves an append of unknown
// outcome, so a dead connection still fails fast.
const lostAckCheckTimeout = 2 * time.Second

// Store reads and appends family subjects of the TOKENS stream.
type Store struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	stream   jetstream.Stream
	subjects Subjects

	// Retention sets each appended event's TTL; set before the store is used.
	Retention Retention
	// FullState stores events in the form of versions before data.state
	// (EncodeFull), for a rolling upgrade from one of them.
	FullState bool
	// Protector, if set, seals the personal fields of the events appended
	// and opens those of the events read. Without it, reading a sealed
	// event fails (ErrSealedWithoutKey).
	Protector *Protector
}

// NewStore returns a store over an existing TOKENS stream.
func NewStore(nc *nats.Conn, js jetstream.JetStream, stream jetstream.Stream, subjects Subjects) *Store {
	return &Store{nc: nc, js: js, stream: stream, subjects: subjects}
}

// Load returns a family's state and the stream sequence of its last event,
// from that one message (each event carries the state after it). An unknown
// family is the zero Family at sequence 0.
func (s *Store) Load(ctx context.Context, familyID string) (domain.Family, uint64, error) {
	return s.load(ctx, familyID, false)
}

// LoadLatest is Load for reads that must reflect every append acknowledged
// before they were asked, whichever instance made it: introspection, and
// the writer's reload after a fence conflict.
//
// Load uses a direct get, which on a replicated stream any current
// replica answers from its own store, a follower that has not applied the
// newest appends yet included (ADR-31; the min_last_seq option ADR-53
// proposed against this was removed before nats-server 2.12,
// nats-server#7285). On a replicated stream LoadLatest therefore sends a
// message get ($JS.API.STREAM.MSG.GET), which only the stream leader
// answers: it acknowledges an append only once it has stored it, and a
// newly elected leader takes requests only after applying every entry
// committed before its election. The one window left is a partitioned
// former leader that has not yet noticed it lost its quorum; JetStream
// offers no read that closes it. A message get costs more than a direct
// get (the JetStream API's queue and workers, a JSON reply:
// docs/benchmarks.md), so a stream of one replica, whose one server
// answers direct gets from the store it acknowledged from, keeps the
// direct get. (A mirror created with mirror_direct would answer them too;
// tokend creates none.) The writer's first read keeps the direct get: the
// append's fence corrects a stale read there.
func (s *Store) LoadLatest(ctx context.Context, familyID string) (domain.Family, uint64, error) {
	return s.load(ctx, familyID, s.replicated())
}

func (s *Store) load(ctx context.Context, familyID string, fromLeader bool) (domain.Family, uint64, error) {
	l, err := s.loadState(ctx, familyID, fromLeader)
	return l.family, l.seq, err
}

// loadState is load with what the writer needs to seal the next events.
func (s *Store) loadState(ctx context.Context, familyID string, fromLeader bool) (loaded, error) {
	env, seq, err := s.last(ctx, familyID, fromLeader)
	if err != nil || seq == 0 {
		return loaded{}, err
	}
	return loaded{family: env.Family(), seq: seq, origin: env.origin}, nil
}

// replicated reports whether the stream has followers, whose direct gets
// may lag the leader.
func (s *Store) replicated() bool {
	info := s.stream.CachedInfo()
	return info == nil || info.Config.Replicas > 1
}

// last returns the family's newest event and its sequence, 0 for an
// unknown family: by direct get, or fromLeader by a message get.
func (s *Store) last(ctx context.Context, familyID string, fromLeader bool) (Envelope, uint64, error) {
	var data []byte
	var seq uint64
	var stored time.Time
	if fromLeader {
		req, err := json.Marshal(msgGetRequest{LastBySubject: s.subjects.Family(familyID), NoHeaders: true})
		if err != nil {
			return Envelope{}, 0, err
		}
		reply, err := s.nc.RequestWithContext(ctx, apiPrefix(s.js.Options())+"STREAM.MSG.GET."+StreamName, req)
		if err != nil {
			return Envelope{}, 0, err
		}
		var resp msgGetResponse
		if err := json.Unmarshal(reply.Data, &resp); err != nil {
			return Envelope{}, 0, fmt.Errorf("message get: %w", err)
		}
		switch {
		case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
			return Envelope{}, 0, nil
		case resp.Error != nil:
			return Envelope{}, 0, resp.Error
		case resp.Message == nil:
			return Envelope{}, 0, jetstream.ErrInvalidJetStreamResponse
		}
		data, seq, stored = resp.Message.Data, resp.Message.Sequence, resp.Message.Time
	} else {
		msg, err := s.stream.GetLastMsgForSubject(ctx, s.subjects.Family(familyID))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return Envelope{}, 0, nil
		}
		if err != nil {
			return Envelope{}, 0, err
		}
		data, seq, stored = msg.Data, msg.Sequence, msg.Time
	}
	env, err := Decode(data, familyID)
	env.storedAt = stored
	if err == nil {
		err = s.reveal(ctx, &env)
	}
	if err != nil {
		return Envelope{}, 0, fmt.Errorf("family %s at seq %d: %w", familyID, seq, err)
	}
	return env, seq, nil
}

// reveal opens env's personal fields, if sealed.
func (s *Store) reveal(ctx context.Context, env *Envelope) error {
	switch {
	case env.PII == "":
		return nil
	case s.Protector == nil:
		return ErrSealedWithoutKey
	}
	return s.Protector.Reveal(ctx, env)
}

// apiPrefix is the JetStream API prefix the jetstream package uses with
// these options (it keeps the resolved one to itself).
func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

// msgGetRequest and msgGetResponse are the JetStream API's message get
// (JSApiMsgGetRequest and JSApiMsgGetResponse in nats-server). The
// jetstream package sends a direct get instead whenever the stream allows
// them, so the message get is spelled out here.
type msgGetRequest struct {
	LastBySubject string `json:"last_by_subj"`
	NoHeaders     bool   `json:"no_hdr,omitempty"`
}

type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Sequence uint64    `json:"seq"`
		Data     []byte    `json:"data"`
		Time     time.Time `json:"time"`
	} `json:"message,omitempty"`
}

// lastEventID returns the id of the family's last event, to tell whether an
// append whose acknowledgement was lost was stored: a follower's direct get
// could say no when the leader has it, so it asks as LoadLatest does.
func (s *Store) lastEventID(ctx context.Context, familyID string) (string, uint64, error) {
	env, seq, err := s.last(ctx, familyID, s.replicated())
	return env.ID, seq, err
}

// Append stores envs on the family's subject if its last sequence is still
// expect, all or nothing, and returns the sequence of the last one. Several
// events go in one atomic batch. It returns ErrConflict when the fence
// refuses. With a Protector, envs are sealed in place first.
func (s *Store) Append(ctx context.Context, familyID string, expect uint64, envs []Envelope) (uint64, error) {
	msgs := make([]*nats.Msg, len(envs))
	for i := range envs {
		if s.Protector != nil {
			if err := s.Protector.seal(ctx, &envs[i]); err != nil {
				return 0, err
			}
		}
		env := envs[i]
		encode := Encode
		if s.FullState {
			encode = EncodeFull
		}
		data, err := encode(env)
		if err != nil {
			return 0, err
		}
		msgs[i] = nats.NewMsg(s.subjects.Family(familyID))
		msgs[i].Data = data
		msgs[i].Header.Set(jetstream.MsgIDHeader, env.ID)
		if ttl := s.Retention.TTL(env); ttl > 0 {
			msgs[i].Header.Set(jetstream.MsgTTLHeader, ttlHeader(ttl))
		}
	}
	msgs[0].Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(expect, 10))

	var seq uint64
	var err error
	if len(msgs) == 1 {
		seq, err = s.publishOne(ctx, msgs[0])
	} else {
		seq, err = s.publishBatch(ctx, msgs)
	}
	if err == nil || errors.Is(err, ErrConflict) {
		return seq, err
	}
	// The outcome is unknown (a lost acknowledgement, a broken connection):
	// the family's last event says whether the append was stored.
	checkCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lostAckCheckTimeout)
	defer cancel()
	id, last, lerr := s.lastEventID(checkCtx, familyID)
	if lerr == nil && id == envs[len(envs)-1].ID {
		return last, nil
	}
	return 0, err
}

func (s *Store) publishOne(ctx context.Context, m *nats.Msg) (uint64, error) {
	ack, err := s.js.PublishMsg(ctx, m)
	if err != nil {
		return 0, fenceError(err)
	}
	return ack.Sequence, nil
}

// publishBatch stores msgs all or nothing, with an atomic batch publish
// (ADR-50): every message names the batch and its place in it; only the
// committing last one is acknowledged. The server stages a batch in a
// store of its own, which is slow, so only a replay (two events) uses it.
func (s *Store) publishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	batch := nuid.Next()
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", batch)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		if i < len(msgs)-1 {
			if err := s.nc.PublishMsg(m); err != nil {
				return 0, err
			}
		}
	}
	last := msgs[len(msgs)-1]
	last.Header.Set("Nats-Batch-Commit", "1")
	reply, err := s.nc.RequestMsgWithContext(ctx, last)
	if err != nil {
		return 0, err
	}
	var ack struct {
		Seq   uint64 `json:"seq"`
		Count int    `json:"count"`
		Error *struct {
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil {
		return 0, fmt.Errorf("batch ack: %w", err)
	}
	if ack.Error != nil {
		if ack.Error.ErrCode == errCodeWrongLastSequence || ack.Error.ErrCode == errCodeWrongLastSeqCluster {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("batch publish: %s (%d)", ack.Error.Description, ack.Error.ErrCode)
	}
	if ack.Count != len(msgs) {
		return 0, fmt.Errorf("batch publish stored %d of %d events", ack.Count, len(msgs))
	}
	return ack.Seq, nil
}

func fenceError(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == errCodeWrongLastSequence || apiErr.ErrorCode == errCodeWrongLastSeqCluster) {
		return ErrConflict
	}
	return err
}
