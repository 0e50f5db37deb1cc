//go:build cluster

// The cluster test runs the shipped three-node configuration on loopback and
// takes a node down under load. It takes about half a minute:
//
//	go test -tags cluster -race -count=1 -run TestCluster -v ./cmd/tokend
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tokend/tokend/api/wire"
	"github.com/tokend/tokend/domain"
	"github.com/tokend/tokend/events"
)

// cluster is three nats-server nodes on loopback, configured from
// ops/nats/cluster/node-N.conf with the ports and store directories moved.
type cluster struct {
	t       *testing.T
	opts    []*server.Options
	servers []*server.Server
}

func mustCluster(t *testing.T) *cluster {
	c := &cluster{t: t}
	clientAddrs, routeAddrs := make([]string, 3), make([]string, 3)
	for i := range 3 {
		clientAddrs[i], routeAddrs[i] = freeAddr(t), freeAddr(t)
	}
	for i := range 3 {
		opts, err := server.ProcessConfigFile(filepath.Join(opsDir, "nats", "cluster", fmt.Sprintf("node-%d.conf", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		opts.Host, opts.Port = splitAddr(t, clientAddrs[i])
		opts.Cluster.Host, opts.Cluster.Port = splitAddr(t, routeAddrs[i])
		opts.Routes = nil
		for j := range 3 {
			if j != i {
				opts.Routes = append(opts.Routes, server.RoutesFromStr("nats-route://"+routeAddrs[j])...)
			}
		}
		opts.StoreDir = t.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		c.opts = append(c.opts, opts)
		c.servers = append(c.servers, nil)
	}
	for i := range 3 {
		c.start(i)
	}
	t.Cleanup(func() {
		for _, s := range c.servers {
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
	})
	checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		for _, s := range c.servers {
			if !s.JetStreamIsClustered() || !s.JetStreamIsCurrent() {
				return errors.New("JetStream cluster not formed yet")
			}
		}
		return nil
	})
	return c
}

func splitAddr(t *testing.T, addr string) (string, int) {
	t.Helper()
	var port int
	host := addr[:strings.LastIndex(addr, ":")]
	if _, err := fmt.Sscanf(addr[len(host)+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}
	return host, port
}

func (c *cluster) start(i int) {
	c.t.Helper()
	opts := *c.opts[i]
	s, err := server.NewServer(&opts)
	if err != nil {
		c.t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		c.t.Fatalf("node %d did not start", i+1)
	}
	c.servers[i] = s
}

func (c *cluster) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
	c.servers[i] = nil
}

func (c *cluster) urls() string {
	var urls []string
	for _, o := range c.opts {
		urls = append(urls, fmt.Sprintf("tls://%s:%d", o.Host, o.Port))
	}
	return strings.Join(urls, ",")
}

// streamLeader returns the index of the node leading the TOKENS stream.
func (c *cluster) streamLeader(js jetstream.JetStream) int {
	c.t.Helper()
	var leader string
	checkFor(c.t, 10*time.Second, 100*time.Millisecond, func() error {
		s, err := js.Stream(context.Background(), events.StreamName)
		if err != nil {
			return err
		}
		if info := s.CachedInfo(); info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == 2 {
			leader = info.Cluster.Leader
			return nil
		}
		return errors.New("no stream leader with two replicas yet")
	})
	for i, o := range c.opts {
		if o.ServerName == leader {
			return i
		}
	}
	c.t.Fatalf("stream leader %q is not a node of the cluster", leader)
	return -1
}

// waitStreamCurrent waits until the stream has a leader and both followers
// are caught up, so reads see the whole replicated history.
func (c *cluster) waitStreamCurrent(js jetstream.JetStream) {
	c.t.Helper()
	checkFor(c.t, 30*time.Second, 200*time.Millisecond, func() error {
		s, err := js.Stream(context.Background(), events.StreamName)
		if err != nil {
			return err
		}
		info := s.CachedInfo()
		if info.Cluster == nil || info.Cluster.Leader == "" || len(info.Cluster.Replicas) != 2 {
			return errors.New("the stream has no leader with two replicas")
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return fmt.Errorf("replica %s is not current", r.Name)
			}
		}
		return nil
	})
}

// ackedRotation is a refresh that a client got a success reply for.
type ackedRotation struct {
	generation uint64
	hash       string
	seq        uint64
}

// TestClusterNodeFailureUnderLoad: two tokend instances on a three-node
// cluster with replicated streams; workers rotate their families through
// both instances while the node leading the stream is stopped and started
// again. Afterwards every acknowledged rotation is in the stream, each
// family's chain has no gap and no fork, nothing was revoked, and every
// family's last acknowledged token still works.
func TestClusterNodeFailureUnderLoad(t *testing.T) {
	creds := mustCredentials(t)
	c := mustCluster(t)
	apps := make([]*App, 2)
	for i := range apps {
		cfg := testConfig(t)
		cfg.NATSURL = c.urls()
		cfg.StreamReplicas = 3
		cfg.ReuseInterval = time.Minute // a retry after a lost reply must find the same child
		cfg.RefreshRate = 0             // the node failure, not the rate limit, is to refuse commands
		creds.login(&cfg)
		apps[i] = MustApp(t, cfg, nil)
	}
	clientFor := func(role string) *nats.Conn {
		nc, _ := creds.connect(t, c.urls(), role, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		return nc
	}
	issuer, refresher, auditor := clientFor("issuer"), clientFor("refresher"), clientFor("auditor")
	js, err := jetstream.New(auditor)
	if err != nil {
		t.Fatal(err)
	}

	const families = 16
	var (
		acked     = make([][]ackedRotation, families)
		familyIDs = make([]string, families)
		current   = make([]string, families)
		failures  atomic.Int64
	)
	for i := range families {
		var r wire.TokenReply
		mustRequest(t, issuer, "tokens.cmd.issue", map[string]string{"subject": fmt.Sprintf("user-%d", i), "client_id": "web-app"}, &r)
		familyIDs[i], current[i] = r.FamilyID, r.RefreshToken
	}
	// rotate refreshes family i until a reply comes, retrying with the same
	// token when the outcome is unknown, and records what the reply says.
	rotate := func(i int, keepGoing func() bool) bool {
		for keepGoing() {
			r, err := refreshOnce(refresher, current[i])
			if errors.Is(err, errRefused) {
				t.Errorf("family %d: a legitimate refresh was refused: %v", i, err)
				return false
			}
			if err != nil {
				failures.Add(1) // a node is down or a reply was lost
				time.Sleep(50 * time.Millisecond)
				continue
			}
			acked[i] = append(acked[i], ackedRotation{generation: generationOf(t, r.RefreshToken), hash: domain.HashToken(r.RefreshToken), seq: r.Seq})
			current[i] = r.RefreshToken
			return true
		}
		return false
	}

	ctx, stopLoad := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range families {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rotate(i, func() bool { return ctx.Err() == nil }) {
			}
		}()
	}
	time.Sleep(3 * time.Second)
	leader := c.streamLeader(js)
	t.Logf("stopping node %d, the stream leader", leader+1)
	c.stop(leader)
	time.Sleep(5 * time.Second)
	t.Logf("starting node %d again", leader+1)
	c.start(leader)
	time.Sleep(5 * time.Second)
	stopLoad()
	wg.Wait()
	c.waitStreamCurrent(js)

	total := 0
	for i := range families {
		// A worker stopped after a request of unknown outcome: settle it the
		// way a client would, by retrying the same token.
		if !rotate(i, func() bool { return true }) {
			continue
		}
		total += len(acked[i])
		checkChain(t, auditor, familyIDs[i], acked[i])
		deadline := time.Now().Add(10 * time.Second)
		if !rotate(i, func() bool { return time.Now().Before(deadline) }) {
			t.Errorf("family %d: the last acknowledged token does not work", i)
		}
	}
	// Both read models converge on the stream after the outage.
	last := lastEventSeq(t, js)
	for n, app := range apps {
		checkFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			if applied := app.projector.Applied(); applied < last {
				return fmt.Errorf("instance %d applied %d of %d", n, applied, last)
			}
			return nil
		})
	}
	if total < families*10 {
		t.Fatalf("only %d rotations were acknowledged: the load did not run", total)
	}
	t.Logf("%d rotations acknowledged across %d families, %d requests failed during the outage and were retried", total, families, failures.Load())
}

var errRefused = errors.New("refused")

// refreshOnce sends one refresh; a contract error other than
// temporarily_unavailable wraps errRefused.
func refreshOnce(nc *nats.Conn, token string) (wire.TokenReply, error) {
	data, _ := json.Marshal(map[string]string{"refresh_token": token, "client_id": "web-app"})
	msg, err := nc.Request("tokens.cmd.refresh", data, 5*time.Second)
	if err != nil {
		return wire.TokenReply{}, err
	}
	if msg.Header.Get("Nats-Service-Error-Code") != "" {
		var e wire.ErrorReply
		json.Unmarshal(msg.Data, &e)
		if e.Error == domain.EUnavailable {
			return wire.TokenReply{}, errors.New(e.Description)
		}
		return wire.TokenReply{}, fmt.Errorf("%w: %s", errRefused, msg.Data)
	}
	var r wire.TokenReply
	return r, json.Unmarshal(msg.Data, &r)
}

func mustRequest(t *testing.T, nc *nats.Conn, subject string, req, reply any) {
	t.Helper()
	data, _ := json.Marshal(req)
	msg, err := nc.Request(subject, data, 10*time.Second)
	if err != nil || msg.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("%s: %v %s", subject, err, msg.Data)
	}
	if err := json.Unmarshal(msg.Data, reply); err != nil {
		t.Fatal(err)
	}
}

// checkChain reads a family's subject and checks it against what clients
// were told: generations 1, 2, 3, … each rotated exactly once, every
// acknowledged child at its generation and sequence, no revocation.
func checkChain(t *testing.T, nc *nats.Conn, familyID string, acked []ackedRotation) {
	t.Helper()
	type stored struct {
		hash string
		seq  uint64
	}
	rotated := map[uint64]stored{}
	gen := uint64(0)
	for _, e := range familyEvents(t, nc, familyID) {
		switch domain.EventType(e.Type) {
		case domain.TokenIssued, domain.TokenRotated:
			if e.Generation != gen+1 {
				t.Fatalf("family %s: %s of generation %d after generation %d: a gap or a fork", familyID, e.Type, e.Generation, gen)
			}
			gen = e.Generation
			rotated[gen] = stored{e.Data.TokenHash, e.Seq}
		case domain.TokenReused:
		default:
			t.Fatalf("family %s: unexpected %s (%s)", familyID, e.Type, e.Reason)
		}
	}
	for _, a := range acked {
		got, ok := rotated[a.generation]
		if !ok || got.hash != a.hash {
			t.Fatalf("family %s: acknowledged generation %d is not in the stream as acknowledged", familyID, a.generation)
		}
		if got.seq > a.seq {
			t.Fatalf("family %s: generation %d stored at seq %d after its reply said %d", familyID, a.generation, got.seq, a.seq)
		}
	}
	if want := acked[len(acked)-1].generation; gen != want {
		t.Fatalf("family %s: the stream reached generation %d, clients saw %d", familyID, gen, want)
	}
}

// generationOf reads the generation a refresh token carries.
func generationOf(t *testing.T, token string) uint64 {
	parts := strings.Split(token, ".")
	var gen uint64
	if len(parts) != 6 {
		t.Fatalf("not a refresh token: %d parts", len(parts))
	}
	if _, err := fmt.Sscanf(parts[2], "%d", &gen); err != nil {
		t.Fatal(err)
	}
	return gen
}
