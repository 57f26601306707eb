package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	pb "coffer/api/cofferpb"
	"coffer/fsm"
	"coffer/seal"
)

// watchProgressEvery is how often an idle watch sends a progress event, so
// that the client can resume close to the present after a reconnect.
const watchProgressEvery = 5 * time.Second

// Watch streams changes under a prefix as this node applies them.
func (k *kvServer) Watch(req *pb.WatchRequest, stream pb.KV_WatchServer) error {
	prefix := req.Prefix
	if prefix == "" {
		prefix = DefaultMount
	}
	if _, _, err := splitMount(prefix); err != nil {
		return err
	}
	if strings.ContainsRune(prefix, 0) || len(prefix) > MaxPathLen {
		return invalidf("invalid watch prefix: it must be a path prefix under %s of at most %d bytes", DefaultMount, MaxPathLen)
	}
	ctx := stream.Context()
	from := req.FromIndex
	if from == 0 {
		from = k.store.AppliedIndex()
		if err := stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_PROGRESS, Index: from, NodeId: k.nodeID}); err != nil {
			return err
		}
	}
	for {
		if k.keys.Sealed() {
			return seal.ErrSealed
		}
		applied := k.store.AppliedIndex()
		changes, err := k.store.ChangesSince(from, prefix, 256)
		if errors.Is(err, fsm.ErrCompacted) {
			return stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_COMPACTED, Index: applied, NodeId: k.nodeID})
		}
		if err != nil {
			return err
		}
		guard, _ := ctx.Value(streamGuardKey{}).(*streamGuard)
		if guard != nil && len(changes) > 0 {
			// A token revoked or expired since the watch began ends it.
			if err := guard.valid(); err != nil {
				return err
			}
		}
		for _, c := range changes {
			if guard != nil && !guard.allowed(c.Path) {
				// Outside what the token may list (a longer name that
				// shares the prefix, a denied sub-tree): not its to see.
				from = max(from, c.Index)
				continue
			}
			if err := stream.Send(&pb.WatchEvent{
				Type: pb.WatchEvent_CHANGE, Index: c.Index, Path: c.Path, Op: c.Op,
				Version: c.Version, Versions: c.Versions, NodeId: k.nodeID,
			}); err != nil {
				return err
			}
			from = max(from, c.Index)
		}
		if len(changes) == 256 {
			continue // more to send before waiting
		}
		from = max(from, applied)
		wctx, cancel := context.WithTimeout(ctx, watchProgressEvery)
		unhook := context.AfterFunc(k.stopCtx, cancel)
		err = k.store.WaitApplied(wctx, from+1)
		unhook()
		cancel()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-k.stopCtx.Done():
			return fmt.Errorf("%w: node is shutting down", errShuttingDown)
		default:
		}
		if err != nil {
			if errors.Is(err, fsm.ErrClosed) {
				return errShuttingDown
			}
			if guard, _ := ctx.Value(streamGuardKey{}).(*streamGuard); guard != nil {
				if err := guard.valid(); err != nil {
					return err
				}
			}
			// Idle: tell the client how far it has seen.
			if err := stream.Send(&pb.WatchEvent{Type: pb.WatchEvent_PROGRESS, Index: from, NodeId: k.nodeID}); err != nil {
				return err
			}
		}
	}
}
