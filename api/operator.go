package api

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	pb "coffer/api/cofferpb"
)

// restoreChunkSize is the size of the SnapshotChunk messages SnapshotRestore
// sends: well under the server's 4 MiB message limit.
const restoreChunkSize = 256 << 10

// Members returns the gossip view of cluster membership from any node that
// answers: every member's addresses, liveness, seal state and suffrage.
func (c *Client) Members(ctx context.Context) (*pb.MembersResponse, error) {
	var resp *pb.MembersResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewOperatorClient(cc).Members(ctx, &pb.MembersRequest{})
		return err
	})
	return resp, err
}

// ListPeers returns the Raft configuration as seen by any node that
// answers, with each peer's applied index and its lag behind the commit
// index.
func (c *Client) ListPeers(ctx context.Context) (*pb.ListPeersResponse, error) {
	var resp *pb.ListPeersResponse
	err := c.call(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewOperatorClient(cc).ListPeers(ctx, &pb.ListPeersRequest{})
		return err
	})
	return resp, err
}

// RemovePeer removes the server with Raft id from the cluster's
// configuration. Any node accepts it (a follower forwards it to the
// leader); it returns the Raft index of the change.
func (c *Client) RemovePeer(ctx context.Context, id string) (*pb.RemovePeerResponse, error) {
	var resp *pb.RemovePeerResponse
	// At most once: a retry after an ambiguous failure could find the peer
	// gone and report an error for a removal that worked. The first node
	// that can be reached takes it (and forwards it to the leader).
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewOperatorClient(cc).RemovePeer(ctx, &pb.RemovePeerRequest{Id: id})
		return err
	})
	return resp, err
}

// StepDown makes the current leader hand leadership to another voter and
// returns the new leader's id. Any node accepts it (a follower forwards it
// to the leader).
func (c *Client) StepDown(ctx context.Context) (*pb.StepDownResponse, error) {
	var resp *pb.StepDownResponse
	// At most once: a retry after a slow transfer could move leadership a
	// second time. The first node that can be reached takes it.
	err := c.callNode(ctx, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
		resp, err = pb.NewOperatorClient(cc).StepDown(ctx, &pb.StepDownRequest{})
		return err
	})
	return resp, err
}

// SnapshotSave streams a snapshot of the cluster's state (ciphertext only)
// from a node that answers and writes it to w. It moves on to the next
// endpoint after a retryable failure only while nothing has been written
// to w yet; a failure after that is returned, and w then holds a partial
// snapshot the caller must discard. The stream is bounded by ctx alone,
// not by the client's per-attempt timeout: a large snapshot takes a while.
func (c *Client) SnapshotSave(ctx context.Context, w io.Writer) error {
	var written int64
	var final error // ends the call: the next attempt returns it at once
	err := c.call(ctx, func(actx context.Context, cc *grpc.ClientConn) error {
		if final != nil {
			return &finalError{final}
		}
		sctx, cancel := streamContext(ctx, actx)
		defer cancel()
		stream, err := pb.NewOperatorClient(cc).SnapshotSave(sctx, &pb.SnapshotSaveRequest{})
		if err != nil {
			return err
		}
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if written > 0 || !Retryable(err) {
					// Part of the snapshot is in w: another endpoint
					// cannot continue it.
					final = err
					return &finalError{err}
				}
				return err
			}
			n, err := w.Write(chunk.GetData())
			written += int64(n)
			if err != nil {
				final = err
				return &finalError{err}
			}
		}
	})
	return unwrapFinal(err)
}

// SnapshotRestore replaces the cluster's state with the snapshot that open
// returns. Only the leader accepts a restore, so it tries the endpoints in
// turn while the answer is retryable (Unavailable: a follower, a sealed or
// unreachable node), calling open again for every try and closing what it
// returned. force restores a snapshot made under other keys, which the
// cluster otherwise refuses with FailedPrecondition. The upload is bounded
// by ctx alone, not by the client's per-attempt timeout.
func (c *Client) SnapshotRestore(ctx context.Context, open func() (io.ReadCloser, error), force bool) error {
	var final error // ends the call: the next attempt returns it at once
	err := c.call(ctx, func(actx context.Context, cc *grpc.ClientConn) error {
		if final != nil {
			return &finalError{final}
		}
		err := c.restoreOnce(ctx, actx, cc, open, force)
		var fe *finalError
		if errors.As(err, &fe) {
			final = fe.err
		} else if err != nil && !Retryable(err) {
			final = err
		}
		return err
	})
	return unwrapFinal(err)
}

// restoreOnce uploads the snapshot to one node. A failure to open or read
// the input comes back as a finalError: no other node can cure it.
func (c *Client) restoreOnce(ctx, actx context.Context, cc *grpc.ClientConn, open func() (io.ReadCloser, error), force bool) error {
	r, err := open()
	if err != nil {
		return &finalError{fmt.Errorf("api: reading the snapshot: %w", err)}
	}
	defer r.Close()
	sctx, cancel := streamContext(ctx, actx)
	defer cancel()
	stream, err := pb.NewOperatorClient(cc).SnapshotRestore(sctx)
	if err != nil {
		return err
	}
	for first := true; ; first = false {
		// A fresh buffer per chunk: gRPC may still hold a sent message.
		buf := make([]byte, restoreChunkSize)
		n, rerr := io.ReadFull(r, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return &finalError{fmt.Errorf("api: reading the snapshot: %w", rerr)}
		}
		if n > 0 || first {
			if err := stream.Send(&pb.SnapshotChunk{Data: buf[:n], Force: first && force}); err != nil {
				// io.EOF means the server ended the call: its status
				// comes with CloseAndRecv below.
				if !errors.Is(err, io.EOF) {
					return err
				}
				break
			}
		}
		if rerr != nil {
			break
		}
	}
	_, err = stream.CloseAndRecv()
	return err
}

// streamContext returns the context of one streaming attempt: the
// attempt's metadata (the token), but ended by the caller's ctx only, not
// by the per-attempt timeout that bounds unary calls.
func streamContext(caller, attempt context.Context) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(attempt))
	stop := context.AfterFunc(caller, cancel)
	return sctx, func() {
		stop()
		cancel()
	}
}

// finalError carries an error that must end a call at once: call moves on
// only on a gRPC Unavailable status, and finalError hides the status of
// the error it holds (it has no Unwrap) until unwrapFinal returns it.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }

// unwrapFinal returns the error a finalError holds, or err itself.
func unwrapFinal(err error) error {
	var fe *finalError
	if errors.As(err, &fe) {
		return fe.err
	}
	return err
}
