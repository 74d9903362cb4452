// nixrepro's viewer and report: draws each <div class="chart" data-spec="ID"> with uPlot from the
// JSON in <script type="application/json" id="ID"> (nixrepro/ui/charts.py says its form).
// Record strings reach the page only as text (uPlot writes labels with textContent, never HTML).
// When done, each chart carries data-points (the points uPlot holds) and <body> data-ready="1".
(function () {
  "use strict";
  var PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f", "#bcbd22"];

  function specOf(el) {
    var source = document.getElementById(el.getAttribute("data-spec"));
    return JSON.parse(source.textContent);
  }

  function seriesOptions(spec, s, i) {
    var color = PALETTE[i % PALETTE.length];
    var opts = { label: s.label, stroke: color, width: 2, spanGaps: true };
    if (spec.kind === "scatter") {
      opts.paths = function () { return null; };
      opts.points = { show: true, size: 8, stroke: color, fill: color };
    } else if (spec.kind === "band") {
      opts.stroke = i === 1 ? PALETTE[0] : "rgba(31,119,180,0.45)";
      opts.width = i === 1 ? 2 : 1;
    }
    return opts;
  }

  function draw(el) {
    var spec = specOf(el);
    var width = Math.max(320, Math.min(el.clientWidth || 640, 1100));
    var series = [{ label: spec.xlabel }];
    var data = [spec.x];
    spec.series.forEach(function (s, i) {
      series.push(seriesOptions(spec, s, i));
      data.push(s.y);
    });
    var xAxis = { label: spec.xlabel };
    var scales = { x: { time: false } };
    if (spec.xticks) {
      var ticks = spec.xticks;
      xAxis.values = function (u, splits) {
        return splits.map(function (v) { return Number.isInteger(v) && ticks[v] !== undefined ? ticks[v] : ""; });
      };
      xAxis.splits = function () { return ticks.map(function (_, i) { return i; }); };
      scales.x.range = [-0.5, ticks.length - 0.5];
    } else if (spec.kind === "scatter") {
      scales.x.range = function (u, lo, hi) { var pad = (hi - lo) * 0.06 || 1; return [lo - pad, hi + pad]; };
    }
    var opts = {
      title: spec.title, width: width, height: 260, scales: scales, series: series,
      axes: [xAxis, { label: spec.ylabel }], legend: { show: spec.kind !== "scatter" },
    };
    if (spec.band) {
      opts.bands = [{ series: [spec.band[0] + 1, spec.band[1] + 1], fill: "rgba(31,119,180,0.18)" }];
    }
    var plot = new uPlot(opts, data, el);
    var points = 0;
    plot.data.slice(1).forEach(function (ys) {
      ys.forEach(function (v) { if (v !== null && v !== undefined) points += 1; });
    });
    el.setAttribute("data-points", String(points));
    el.setAttribute("data-series", String(plot.data.length - 1));
    el.setAttribute("data-rendered", "1");
  }

  function init() {
    var charts = document.querySelectorAll(".chart[data-spec]");
    var failed = 0;
    Array.prototype.forEach.call(charts, function (el) {
      try {
        draw(el);
      } catch (err) {
        failed += 1;
        el.setAttribute("data-error", String(err));
        el.textContent = "this chart could not be drawn: " + err;
      }
    });
    document.body.setAttribute("data-charts", String(charts.length));
    document.body.setAttribute("data-charts-failed", String(failed));
    document.body.setAttribute("data-ready", "1");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
