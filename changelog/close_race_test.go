package changelog

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestCloseAnswersEveryCaller: a write that passed the closed check as
// Close began, and sends its request once the committer has drained its
// queues and exited, still returns (ErrClosed). It used to wait for an
// answer that never came: the send and the stop are both ready then, and
// select takes either, so 20 rounds hang the old code with odds 1-2^-20.
func TestCloseAnswersEveryCaller(t *testing.T) {
	t.Cleanup(func() { enqueueHook = nil })
	for round := range 20 {
		st, err := Open(fmt.Sprint("/close-", round), Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: vfs.NewMem()})
		if err != nil {
			t.Fatal(err)
		}
		held := make(chan struct{})
		enqueueHook = func(s *Store) {
			if s != st {
				return
			}
			close(held)
			<-s.stop    // Close has begun
			s.wg.Wait() // the committer and the syncer have exited
		}
		res := make(chan error, 1)
		go func() {
			_, err := st.Write(context.Background(), WriteOp{Key: "k", Value: []byte("v")})
			res <- err
		}()
		<-held
		st.Close()
		select {
		case err := <-res:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("round %d: a write sent after the committer exited got %v, want ErrClosed", round, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: a write sent after the committer exited still waits 5s after Close", round)
		}
		enqueueHook = nil
	}
}
