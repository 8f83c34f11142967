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
	for round := range 20 {
		held := make(chan struct{})
		hook := func(s *Store) {
			close(held)
			<-s.stop    // Close has begun
			s.wg.Wait() // the committer and the syncer have exited
		}
		st, err := Open(fmt.Sprint("/close-", round), Options{DC: "dc1", DCs: []string{"dc1", "dc2"}, Partitions: 4, FS: vfs.NewMem(), enqueueHook: hook})
		if err != nil {
			t.Fatal(err)
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
	}
}
