package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// cmdBenchPlot is `coffer bench plot`.
func cmdBenchPlot(e *env, args []string) error {
	f := newFlags("coffer bench plot", "[flags]", `
Draw the scale rows of bin/compare-figures.json (coffer bench report):
operations per second against keys stored, on a logarithmic axis, writes
and stale follower reads (64 clients) for coffer and etcd, into a PNG.`)
	var in, out string
	f.fs.StringVar(&in, "in", "bin/compare-figures.json", "the figures of coffer bench report -json")
	f.fs.StringVar(&out, "out", "", "the PNG file to write (required)")
	args, err := f.parse(e, args)
	if err != nil {
		return err
	}
	if err := f.wantArgs(args); err != nil {
		return err
	}
	if err := checkPNGPath(f.name, "out", out); err != nil {
		return err
	}
	b, err := os.ReadFile(in)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-in: %v", err)}
	}
	var figs compareFigures
	if err := json.Unmarshal(b, &figs); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-in: %s is not the JSON of coffer bench report: %v", in, err)}
	}
	fh, err := os.Create(out)
	if err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-out: %v", err)}
	}
	if err := renderScale(fh, figs.Scale); err != nil {
		fh.Close()
		os.Remove(out)
		return &cliError{code: 1, msg: err.Error()}
	}
	if err := fh.Close(); err != nil {
		return &cliError{code: 1, msg: fmt.Sprintf("-out: %v", err)}
	}
	fmt.Fprintf(e.stdout, "wrote %s\n", out)
	return nil
}

// renderScale draws ops/s against keys stored (log x) for each tool's
// writes and reads as a 960×540 PNG.
func renderScale(w io.Writer, points []scalePoint) error {
	type series struct {
		tool string
		read bool
	}
	lines := map[series]plotter.XYs{}
	top := 0.0
	for _, p := range points {
		if p.Keys <= 0 {
			continue
		}
		if p.Writes > 0 {
			lines[series{p.Tool, false}] = append(lines[series{p.Tool, false}], plotter.XY{X: float64(p.Keys), Y: p.Writes})
		}
		if p.Reads > 0 {
			lines[series{p.Tool, true}] = append(lines[series{p.Tool, true}], plotter.XY{X: float64(p.Keys), Y: p.Reads})
		}
		top = max(top, p.Writes, p.Reads)
	}
	if len(lines) == 0 {
		return fmt.Errorf("no scale rows to draw: the figures hold no writes or reads by keys stored")
	}
	p := plot.New()
	p.Title.Text = "writes and stale follower reads (64 clients) by keys stored"
	p.X.Label.Text = "keys stored"
	p.Y.Label.Text = "operations per second"
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Y.Min, p.Y.Max = 0, math.Max(top*1.35, 10) // room for the legend above the lines
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = true, true
	keys := make([]series, 0, len(lines))
	for s := range lines {
		keys = append(keys, s)
	}
	slices.SortFunc(keys, func(a, b series) int {
		if a.tool != b.tool {
			if a.tool < b.tool {
				return -1
			}
			return 1
		}
		if a.read == b.read {
			return 0
		}
		if a.read {
			return 1
		}
		return -1
	})
	for _, s := range keys {
		xys := lines[s]
		slices.SortFunc(xys, func(a, b plotter.XY) int { return int(a.X - b.X) })
		l, sc, err := plotter.NewLinePoints(xys)
		if err != nil {
			return fmt.Errorf("drawing the scale rows: %w", err)
		}
		c := color.RGBA{R: 31, G: 119, B: 180, A: 255} // coffer: blue
		if s.tool != "coffer" {
			c = color.RGBA{R: 255, G: 127, B: 14, A: 255} // etcd: orange
		}
		l.Color, l.Width = c, vg.Points(1.5)
		sc.Color, sc.Radius = c, vg.Points(3)
		name := s.tool + " writes"
		if s.read {
			name = s.tool + " reads"
			l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
			sc.Shape = draw.BoxGlyph{}
		} else {
			sc.Shape = draw.CircleGlyph{}
		}
		p.Add(l, sc)
		p.Legend.Add(name, l, sc)
	}
	c := vgimg.NewWith(vgimg.UseWH(10*vg.Inch, 5.625*vg.Inch), vgimg.UseDPI(96))
	p.Draw(draw.New(c))
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(w); err != nil {
		return fmt.Errorf("writing the PNG: %w", err)
	}
	return nil
}
