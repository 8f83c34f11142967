package bridge

import (
	"slices"
	"testing"
)

func TestEdges(t *testing.T) {
	dcs := []string{"a", "b", "c"}
	tests := []struct {
		topology, hub string
		want          []Edge
	}{
		{"mesh", "", []Edge{{"b", "a"}, {"c", "a"}, {"a", "b"}, {"c", "b"}, {"a", "c"}, {"b", "c"}}},
		{"ring", "", []Edge{{"c", "a"}, {"a", "b"}, {"b", "c"}}},
		{"star", "b", []Edge{{"b", "a"}, {"a", "b"}, {"c", "b"}, {"b", "c"}}},
	}
	for _, tt := range tests {
		got, err := Edges(tt.topology, dcs, tt.hub)
		if err != nil {
			t.Fatalf("%s: %v", tt.topology, err)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s edges %v, want %v", tt.topology, got, tt.want)
		}
	}
	if _, err := Edges("star", dcs, "z"); err == nil {
		t.Error("star with a hub outside dcs: no error")
	}
}
