// Command mirror keeps a copy of one key prefix of a replicator DC in a
// local file, in step with the DC's change feed (GET /v1/changes), and
// survives being killed at any moment.
//
// The file holds the rows and the feed cursor they are current to, and
// every update replaces the whole file in one atomic step (write a
// temporary file, fsync it, rename it over the old one, fsync the
// directory). So after a crash the file is either the old rows with the
// old cursor or the new rows with the new cursor, never rows of one with
// the cursor of the other, and the mirror resumes from exactly where its
// rows are. See README.md for why that matters.
//
//	go run ./examples/mirror --addr http://127.0.0.1:7071 --prefix orders/ --file orders.json
//
// With no file yet (or when the DC no longer holds the changes after the
// stored cursor: 410) it starts from a snapshot: GET
// /v1/changes?snapshot=true streams every key under the prefix from one
// point in time, then the cursor of that point, then the changes after
// it, so nothing is missed and nothing is applied twice.
//
// An example built on the HTTP API only; not part of the API itself.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Row is a key as GET /v1/kv/{key} shows it: the mirror's copy.
type Row struct {
	Key      string    `json:"key"`
	Context  string    `json:"context"`
	Values   [][]byte  `json:"values"`
	Siblings []Sibling `json:"siblings"`
	Conflict bool      `json:"conflict"`
	Resolver string    `json:"resolver"`
}

// Sibling is one stored version of a key.
type Sibling struct {
	Value   []byte `json:"value"`
	Deleted bool   `json:"deleted"`
	Origin  string `json:"origin"`
	Dot     string `json:"dot"`
	HLC     uint64 `json:"hlc"`
}

// line is one line of the change feed: a change, a snapshot key, or the
// end of a snapshot, a heartbeat or an error.
type line struct {
	Type    string  `json:"type"`
	Cursor  *uint64 `json:"cursor"`
	Deleted bool    `json:"deleted"`
	Error   string  `json:"error"`
	Status  int     `json:"status"`
	Row
}

// State is what the mirror's file holds.
type State struct {
	Prefix string `json:"prefix"`
	// Cursor is the feed position the rows are current to; nil before
	// the first snapshot.
	Cursor *uint64         `json:"cursor"`
	Rows   map[string]*Row `json:"rows"`
	// Audit, kept with --audit, lists the cursors of the snapshots taken
	// and of the changes applied, in order, for tests.
	Audit *Audit `json:"audit,omitempty"`
}

// Audit records what the mirror applied.
type Audit struct {
	Snapshots []uint64 `json:"snapshots"`
	Changes   []uint64 `json:"changes"`
}

type config struct {
	addr, token, prefix, file string
	heartbeat                 time.Duration
	audit                     bool
}

func main() {
	var cfg config
	flag.StringVar(&cfg.addr, "addr", "http://127.0.0.1:7070", "the sidecar's HTTP address")
	flag.StringVar(&cfg.token, "token", os.Getenv("REPLICATOR_TOKEN"), "bearer token (env REPLICATOR_TOKEN)")
	flag.StringVar(&cfg.prefix, "prefix", "", "the key prefix to mirror")
	flag.StringVar(&cfg.file, "file", "mirror.json", "the file holding the rows and the cursor")
	flag.DurationVar(&cfg.heartbeat, "heartbeat", 10*time.Second, "how often the sidecar sends a heartbeat while idle")
	flag.BoolVar(&cfg.audit, "audit", false, "also record in the file the cursor of every change applied (for tests; grows without bound)")
	flag.Parse()
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}

// errGone is a 410: the DC no longer holds the changes after the cursor.
var errGone = errors.New("the DC no longer holds the changes after our cursor")

// errRepeated is the feed breaking its promise: a change at or below a
// cursor already stored. The mirror stops rather than guess.
var errRepeated = errors.New("the feed sent a change at or below the stored cursor")

func run(ctx context.Context, cfg config) error {
	st, err := load(cfg.file)
	if err != nil {
		return err
	}
	if st.Cursor != nil && st.Prefix != cfg.prefix {
		return fmt.Errorf("%s mirrors prefix %q, not %q; use another --file", cfg.file, st.Prefix, cfg.prefix)
	}
	st.Prefix = cfg.prefix
	if cfg.audit && st.Audit == nil {
		st.Audit = &Audit{}
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := follow(ctx, cfg, st)
		switch {
		case ctx.Err() != nil:
		case errors.Is(err, errRepeated):
			return err
		case errors.Is(err, errGone):
			log.Printf("%v; starting again from a snapshot", err)
			st.Cursor = nil // the rows stay on disk until the snapshot replaces them
		case err != nil:
			log.Printf("feed: %v; reconnecting in %s", err, backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
			}
			backoff = min(2*backoff, 2*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
	}
	return nil
}

// follow reads the feed from the stored cursor (or a snapshot) until the
// connection ends, saving the rows and the cursor together.
func follow(ctx context.Context, cfg config, st *State) error {
	q := url.Values{"feed": {"continuous"}, "heartbeat": {cfg.heartbeat.String()}, "prefix": {cfg.prefix}}
	if st.Cursor == nil {
		q.Set("snapshot", "true")
	} else {
		q.Set("since", fmt.Sprint(*st.Cursor))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(cfg.addr, "/")+"/v1/changes?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	if cfg.token != "" {
		req.Header.Set("Authorization", "Bearer "+cfg.token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusGone:
		return errGone
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	var snapshot map[string]*Row
	unsaved := 0
	for {
		b, err := br.ReadBytes('\n')
		if err != nil {
			if unsaved > 0 {
				return errors.Join(err, save(cfg.file, st))
			}
			return err
		}
		var l line
		if err := json.Unmarshal(b, &l); err != nil {
			return fmt.Errorf("a line that is not JSON: %v", err)
		}
		switch l.Type {
		case "snapshot":
			if snapshot == nil {
				snapshot = map[string]*Row{}
			}
			row := l.Row
			snapshot[l.Key] = &row
		case "snapshot_end":
			// The snapshot is complete: it replaces the rows, with its
			// cursor, in one write.
			if snapshot == nil {
				snapshot = map[string]*Row{}
			}
			st.Rows, st.Cursor, snapshot = snapshot, l.Cursor, nil
			if st.Audit != nil {
				st.Audit.Snapshots = append(st.Audit.Snapshots, *l.Cursor)
			}
			log.Printf("snapshot of %d keys at cursor %d", len(st.Rows), *st.Cursor)
			unsaved++
		case "change":
			if st.Cursor == nil || *l.Cursor <= *st.Cursor {
				return fmt.Errorf("%w: cursor %d after %v", errRepeated, *l.Cursor, st.Cursor)
			}
			if l.Deleted {
				delete(st.Rows, l.Key)
			} else {
				row := l.Row
				st.Rows[l.Key] = &row
			}
			st.Cursor = l.Cursor
			if st.Audit != nil {
				st.Audit.Changes = append(st.Audit.Changes, *l.Cursor)
			}
			unsaved++
		case "heartbeat":
			// Changes outside the prefix moved the feed on: so may we.
			if st.Cursor != nil && *l.Cursor > *st.Cursor {
				st.Cursor = l.Cursor
				unsaved++
			}
		case "error":
			if l.Status == http.StatusGone {
				return errGone
			}
			return fmt.Errorf("the feed ended: %s", l.Error)
		}
		// Save once caught up with what has arrived, or every 256 lines.
		if unsaved > 0 && snapshot == nil && (br.Buffered() == 0 || unsaved >= 256) {
			if err := save(cfg.file, st); err != nil {
				return err
			}
			unsaved = 0
		}
	}
}

func load(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &State{Rows: map[string]*Row{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.Rows == nil {
		st.Rows = map[string]*Row{}
	}
	return &st, nil
}

// save replaces the file with st in one atomic step: rows and cursor
// together, or neither.
func save(path string, st *State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
