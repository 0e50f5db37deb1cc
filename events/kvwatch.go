package events

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// FollowBucket keeps apply told of every entry of kv, the entries present
// now first, then every change, until the returned watcher is stopped.
// loaded runs once the present entries were applied, and FollowBucket
// returns after that, or when ctx (which bounds only the setting up) ends.
func FollowBucket(ctx context.Context, kv jetstream.KeyValue, apply func(jetstream.KeyValueEntry), loaded func()) (jetstream.KeyWatcher, error) {
	w, err := kv.WatchAll(context.WithoutCancel(ctx))
	if err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		initial := true
		for e := range w.Updates() {
			switch {
			case e != nil:
				apply(e)
			case initial: // the end of the present entries
				loaded()
				close(ready)
				initial = false
			}
		}
	}()
	select {
	case <-ready:
		return w, nil
	case <-ctx.Done():
		w.Stop()
		return nil, ctx.Err()
	}
}
