package projections

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"time"

	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
	"github.com/tokend/tokend/queries"
)

// Reader answers queries from the read model. Every answer carries AsOfSeq,
// read before the query runs, so it never claims more than the query saw.
type Reader struct {
	db  *DB
	p   *Projector
	now func() time.Time

	// Protector, set with personal data protection on, opens the sealed
	// personal fields of the rows answered, and names the subjects looked
	// up by their pseudonyms. Set before the reader is used.
	Protector *events.Protector
}

// NewReader returns a reader over db, fed by p.
func NewReader(db *DB, p *Projector, now func() time.Time) *Reader {
	return &Reader{db: db, p: p, now: now}
}

// FamilyView is a family as of the read model's position, with its chain
// of tokens, oldest first.
type FamilyView struct {
	FamilyID, Subject, ClientID, Scope string
	Audience                           []string
	Status                             domain.Status // as of now: active, revoked or expired
	Generation                         uint64
	CreatedAt, LastUsedAt, ExpiresAt   time.Time
	RevokedAt                          *time.Time // nil unless revoked
	RevokedReason                      string
	ArchivedAt                         *time.Time // nil unless summarized by family.archived
	Tokens                             []TokenView
	AsOfSeq                            uint64
	// Erased: the subject's personal data was erased; Subject is its
	// pseudonym.
	Erased bool
	// DPoPJKT is the thumbprint of the DPoP key every refresh must prove
	// possession of (RFC 9449); "" for a bearer family.
	DPoPJKT string
}

// TokenView is one generation of a family; the token itself is never kept.
type TokenView struct {
	Generation uint64
	Status     string // active, rotated or revoked
	IssuedAt   time.Time
	RotatedAt  *time.Time // nil unless rotated
}

// Family returns a family's view, or an ENotFound error.
func (r *Reader) Family(ctx context.Context, familyID string) (FamilyView, error) {
	asOf := r.p.Applied()
	row, err := r.db.R.GetFamily(ctx, familyID)
	if errors.Is(err, sql.ErrNoRows) {
		return FamilyView{}, domain.Errorf(domain.ENotFound, "no family %q", familyID)
	}
	if err != nil {
		return FamilyView{}, err
	}
	toks, err := r.db.R.FamilyTokens(ctx, familyID)
	if err != nil {
		return FamilyView{}, err
	}
	f := familyOf(row)
	personal, err := r.familyPersonal(ctx, row)
	if err != nil {
		return FamilyView{}, err
	}
	f.Subject = personal.Subject
	v := FamilyView{Erased: personal.Erased, FamilyID: f.ID, Subject: f.Subject, ClientID: f.ClientID, Scope: domain.ScopeString(f.Scope),
		Audience: f.Audience, Status: f.StatusAt(r.now()), Generation: f.Generation, CreatedAt: f.CreatedAt,
		LastUsedAt: f.LastUsedAt, ExpiresAt: f.ExpiresAt(), RevokedReason: f.RevokedReason, AsOfSeq: asOf,
		Tokens: make([]TokenView, len(toks)), DPoPJKT: f.DPoPJKT}
	if f.Status == domain.StatusRevoked {
		v.RevokedAt = &f.RevokedAt
	}
	if !f.ArchivedAt.IsZero() {
		v.ArchivedAt = &f.ArchivedAt
	}
	for i, t := range toks {
		tv := TokenView{Generation: uint64(t.Generation), Status: "active", IssuedAt: unixNano(t.IssuedAt)}
		switch {
		case t.RotatedAt != 0:
			at := unixNano(t.RotatedAt)
			tv.Status, tv.RotatedAt = "rotated", &at
		case f.Status == domain.StatusRevoked:
			tv.Status = "revoked"
		}
		v.Tokens[i] = tv
	}
	return v, nil
}

// AuditFilter selects audit events; zero fields do not filter.
type AuditFilter struct {
	FamilyID, Subject, ClientID string
	// PresentedBy selects the events in which that client presented
	// another client's token (AuditEvent.PresentedBy); ClientID is the owner.
	PresentedBy  string
	Types        []string
	Since, Until time.Time
	AfterSeq     uint64
	Limit        int
	// MaxBytes, if set, bounds a page by the sum of Size (then required)
	// over its events as well, so that a reply fits a message: the page
	// ends before the event that would exceed it, but holds at least one
	// event if any matches.
	MaxBytes int
	Size     func(AuditEvent) int
}

// AuditEvent is a stored event as the audit trail shows it.
type AuditEvent struct {
	Seq                         uint64
	ID, Type                    string
	Time                        time.Time
	FamilyID, Subject, ClientID string
	// PresentedBy is the client that presented the family's token when it
	// is not ClientID, the owner; "" otherwise.
	PresentedBy string
	Generation  uint64
	// PresentedGeneration is the presented token's generation, Generation
	// the family's; 0 when the event presented none.
	PresentedGeneration uint64
	// DPoPJKT is the key thumbprint the family is bound to, on every event
	// of a bound family; PresentedJKT the other key whose proof came with
	// the family's token (token.key_mismatch). "" when none.
	DPoPJKT, PresentedJKT string
	Reason                string
	Context               json.RawMessage // a JSON object, {} when none
	// Erased: the subject's personal data was erased; Subject is its
	// pseudonym and Context is {}.
	Erased bool
	// ContextExpired: the context was past its retention
	// (--pii-context-retention); Context is {}.
	ContextExpired bool
}

// AuditPage is one page of events in ascending seq. NextAfterSeq is the
// last event's seq (0 if none), where the next page starts.
type AuditPage struct {
	Events                []AuditEvent
	NextAfterSeq, AsOfSeq uint64
}

// auditChunk is the most rows a page bounded by bytes reads at a time, so
// a page of large events stops reading soon after its budget is spent.
const auditChunk = 100

// Audit returns the events matching f after f.AfterSeq, at most f.Limit
// and f.MaxBytes. Each filter combination reads one index in seq order
// (see query.sql), so a page reads about as many rows as it returns and
// never sorts.
func (r *Reader) Audit(ctx context.Context, f AuditFilter) (AuditPage, error) {
	page := AuditPage{Events: []AuditEvent{}, AsOfSeq: r.p.Applied()}
	q, ok, err := r.auditQuery(ctx, f)
	if err != nil {
		return AuditPage{}, err
	}
	if !ok {
		return page, nil
	}
	used := 0
	for len(page.Events) < f.Limit {
		n := f.Limit - len(page.Events)
		if f.MaxBytes > 0 {
			n = min(n, auditChunk)
		}
		rows, err := r.auditRowsBySubjectForms(ctx, q, int64(n))
		if err != nil {
			return AuditPage{}, err
		}
		for _, row := range rows {
			personal, err := r.reveal(ctx, row.ID, row.FamilyID, row.Subject, row.Pii, json.RawMessage(row.Context))
			if err != nil {
				return AuditPage{}, err
			}
			e := AuditEvent{Seq: uint64(row.Seq), ID: row.ID, Type: row.Type, Time: unixNano(row.Time),
				FamilyID: row.FamilyID, Subject: personal.Subject, ClientID: row.ClientID, PresentedBy: row.PresentedBy,
				Generation: uint64(row.Generation), PresentedGeneration: uint64(row.PresentedGeneration),
				DPoPJKT: row.DpopJkt, PresentedJKT: row.PresentedJkt, Reason: row.Reason, Context: personal.context, Erased: personal.Erased, ContextExpired: personal.ContextExpired}
			if f.MaxBytes > 0 {
				size := f.Size(e)
				if len(page.Events) > 0 && used+size > f.MaxBytes {
					return page, nil
				}
				used += size
			}
			page.Events = append(page.Events, e)
			page.NextAfterSeq, q.after = e.Seq, row.Seq
		}
		if len(rows) < n {
			break
		}
	}
	return page, nil
}

// auditQuery is an audit filter ready to read: its time window mapped to
// the seq range (after, upto], its types deduplicated.
type auditQuery struct {
	f            AuditFilter
	after, upto  int64
	since, until int64
	types        []string
	typesJSON    string
}

// auditQuery maps f to a query; ok is false when nothing can match.
func (r *Reader) auditQuery(ctx context.Context, f AuditFilter) (q auditQuery, ok bool, err error) {
	q = auditQuery{f: f, after: int64(f.AfterSeq), upto: math.MaxInt64, since: math.MinInt64, until: math.MaxInt64}
	if !f.Since.IsZero() {
		q.since = f.Since.UnixNano()
		first, err := r.db.R.FirstSeqSince(ctx, q.since)
		if errors.Is(err, sql.ErrNoRows) {
			return q, false, nil
		}
		if err != nil {
			return q, false, err
		}
		q.after = max(q.after, first-1)
	}
	if !f.Until.IsZero() {
		q.until = f.Until.UnixNano()
		last, err := r.db.R.LastSeqBefore(ctx, q.until)
		if errors.Is(err, sql.ErrNoRows) {
			return q, false, nil
		}
		if err != nil {
			return q, false, err
		}
		q.upto = last
	}
	q.types = slices.Clone(f.Types)
	slices.Sort(q.types)
	q.types = slices.Compact(q.types)
	if len(q.types) > 0 {
		b, _ := json.Marshal(q.types)
		q.typesJSON = string(b)
	}
	return q, q.after < q.upto, nil
}

// familyPersonal is the family's subject as its newest event stores it,
// opened: the family row keeps the subject its first event had, in clear
// for a family issued before protection was turned on.
func (r *Reader) familyPersonal(ctx context.Context, row queries.Family) (revealed, error) {
	newest, err := r.db.R.FamilyPersonal(ctx, row.FamilyID)
	if errors.Is(err, sql.ErrNoRows) {
		return revealed{Revealed: events.Revealed{Subject: row.Subject}}, nil
	}
	if err != nil {
		return revealed{}, err
	}
	return r.reveal(ctx, newest.ID, row.FamilyID, newest.Subject, newest.Pii, nil)
}

// revealed is a row's personal part as answered.
type revealed struct {
	events.Revealed
	context json.RawMessage
}

// reveal opens a row's sealed personal fields (the event eventID's), or
// answers those stored in clear: subject and clearContext (nil for a
// family row, which has none).
func (r *Reader) reveal(ctx context.Context, eventID, familyID, subject string, sealed sql.NullString, clearContext json.RawMessage) (revealed, error) {
	if !sealed.Valid {
		return revealed{Revealed: events.Revealed{Subject: subject}, context: clearContext}, nil
	}
	if r.Protector == nil {
		return revealed{}, events.ErrSealedWithoutKey
	}
	p, err := r.Protector.OpenStored(ctx, eventID, familyID, subject, sealed.String)
	if err != nil {
		return revealed{}, err
	}
	out := revealed{Revealed: p, context: json.RawMessage("{}")}
	if len(p.Context) > 0 {
		out.context, _ = json.Marshal(p.Context)
	}
	return out, nil
}

// auditRowsBySubjectForms is auditRows, except that with protection on
// a subject is looked up under both forms it may be stored in: its
// pseudonym (events sealed) and in clear (events stored before protection
// was turned on). Each read is in seq order, so the page is the first
// limit rows of both merged.
func (r *Reader) auditRowsBySubjectForms(ctx context.Context, q auditQuery, limit int64) ([]queries.AuditEvent, error) {
	rows, err := r.auditRows(ctx, q, limit)
	if err != nil || r.Protector == nil || q.f.Subject == "" {
		return rows, err
	}
	q.f.Subject = r.Protector.Pseudonym(q.f.Subject)
	sealed, err := r.auditRows(ctx, q, limit)
	if err != nil {
		return nil, err
	}
	rows = append(rows, sealed...)
	slices.SortFunc(rows, func(a, b queries.AuditEvent) int { return cmp.Compare(a.Seq, b.Seq) })
	return rows[:min(len(rows), int(limit))], nil
}

// auditRows reads the next rows of q after q.after, at most limit.
func (r *Reader) auditRows(ctx context.Context, q auditQuery, limit int64) ([]queries.AuditEvent, error) {
	f, after, upto, since, until, types := q.f, q.after, q.upto, q.since, q.until, q.typesJSON
	switch {
	case f.FamilyID != "":
		return r.db.R.AuditByFamily(ctx, queries.AuditByFamilyParams{FamilyID: f.FamilyID, AfterSeq: after, UptoSeq: upto,
			Subject: f.Subject, ClientID: f.ClientID, PresentedBy: f.PresentedBy, Types: types, Since: since, Until: until,
			Lim: limit})
	case f.PresentedBy != "":
		// After a family, whose events are few, and before a subject or an
		// owner, whose events add up over the retention: only refusals of
		// a foreign client's presentation name a presenter.
		return r.db.R.AuditByPresenter(ctx, queries.AuditByPresenterParams{PresentedBy: f.PresentedBy, AfterSeq: after,
			UptoSeq: upto, Subject: f.Subject, ClientID: f.ClientID, Types: types, Since: since, Until: until, Lim: limit})
	case f.Subject != "":
		return r.db.R.AuditBySubject(ctx, queries.AuditBySubjectParams{Subject: f.Subject, AfterSeq: after, UptoSeq: upto,
			ClientID: f.ClientID, Types: types, Since: since, Until: until, Lim: limit})
	case f.ClientID != "":
		return r.db.R.AuditByClient(ctx, queries.AuditByClientParams{ClientID: f.ClientID, AfterSeq: after, UptoSeq: upto,
			Types: types, Since: since, Until: until, Lim: limit})
	case len(q.types) == 1 && q.types[0] != string(domain.TokenRotated):
		return r.db.R.AuditByType(ctx, queries.AuditByTypeParams{Type: q.types[0], AfterSeq: after, UptoSeq: upto,
			Since: since, Until: until, Lim: limit})
	case len(q.types) > 1 && !slices.ContainsFunc(q.types, func(t string) bool { return !rareTypes[t] }):
		return r.db.R.AuditByRareTypes(ctx, queries.AuditByRareTypesParams{Types: types, AfterSeq: after, UptoSeq: upto,
			Since: since, Until: until, Lim: limit})
	default:
		// Common types make up much of the stream, so the table in seq
		// order finds a page of them about as fast as an index would;
		// audit_by_type leaves out token.rotated (migration 0006).
		return r.db.R.AuditBySeq(ctx, queries.AuditBySeqParams{AfterSeq: after, UptoSeq: upto, Types: types,
			Since: since, Until: until, Lim: limit})
	}
}

// rareTypes are the types the partial index audit_rare holds (migration
// 0003, 0012): few among many rotations.
var rareTypes = map[string]bool{
	string(domain.ReplayDetected): true, string(domain.KeyMismatch): true, string(domain.FamilyRevoked): true,
	string(domain.RefreshRejected): true,
}

// RevocableFamilies lists the families of a subject or a client (exactly
// one of them set) that are neither revoked nor expired, as of the
// projection's position.
func (r *Reader) RevocableFamilies(ctx context.Context, subject, clientID string) ([]string, error) {
	now := r.now().UnixNano()
	if subject != "" {
		ids, err := r.db.R.RevocableFamiliesBySubject(ctx, queries.RevocableFamiliesBySubjectParams{Subject: subject, Now: now})
		if err != nil || r.Protector == nil {
			return ids, err
		}
		// Under its pseudonym too: see auditRowsBySubjectForms.
		sealed, err := r.db.R.RevocableFamiliesBySubject(ctx, queries.RevocableFamiliesBySubjectParams{
			Subject: r.Protector.Pseudonym(subject), Now: now})
		return append(ids, sealed...), err
	}
	return r.db.R.RevocableFamiliesByClient(ctx, queries.RevocableFamiliesByClientParams{ClientID: clientID, Now: now})
}

// FamiliesToArchive lists up to limit families whose absolute expiry is
// before the given time and that have no family.archived yet.
func (r *Reader) FamiliesToArchive(ctx context.Context, before time.Time, limit int) ([]string, error) {
	return r.db.R.FamiliesToArchive(ctx, queries.FamiliesToArchiveParams{Before: before.UnixNano(), Lim: int64(limit)})
}

func familyOf(row queries.Family) domain.Family {
	var aud []string
	json.Unmarshal([]byte(row.Audience), &aud)
	f := domain.Family{ID: row.FamilyID, Subject: row.Subject, ClientID: row.ClientID, Scope: splitScope(row.Scope),
		Audience: nonNil(aud), Status: domain.Status(row.Status), Generation: uint64(row.Generation),
		CurrentHash: row.CurrentHash, CreatedAt: unixNano(row.CreatedAt), LastUsedAt: unixNano(row.LastUsedAt),
		IdleExpiresAt: unixNano(row.IdleExpiresAt), AbsoluteExpiresAt: unixNano(row.AbsoluteExpiresAt),
		RevokedReason: row.RevokedReason, DPoPJKT: row.DpopJkt}
	if row.RevokedAt.Valid {
		f.RevokedAt = unixNano(row.RevokedAt.Int64)
	}
	if row.ArchivedAt.Valid {
		f.ArchivedAt = unixNano(row.ArchivedAt.Int64)
	}
	return f
}

func splitScope(s string) []string {
	scope, _ := domain.ParseScope(s)
	return scope
}

func unixNano(n int64) time.Time { return time.Unix(0, n).UTC() }

// ActiveFamilies counts the families neither revoked nor expired.
func (r *Reader) ActiveFamilies(ctx context.Context) (int64, error) {
	return r.db.R.CountActiveFamilies(ctx, r.now().UnixNano())
}
