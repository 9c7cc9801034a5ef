// Steady ingest: VUS producers POST 1 KiB JSON as fast as answers come.
//   k6 run -e TARGET=http://127.0.0.1:8080/bench/x -e VUS=32 -e DURATION=20s ingest.js
import http from 'k6/http';
import { check } from 'k6';

const body = JSON.stringify({ event: 'lead.scored', pad: 'x'.repeat(1024 - 40) });
export const options = {
  vus: Number(__ENV.VUS || 32),
  duration: __ENV.DURATION || '20s',
  summaryTrendStats: ['avg', 'p(50)', 'p(99)', 'max'],
};
export default function () {
  const r = http.post(__ENV.TARGET, body, { headers: { 'Content-Type': 'application/json' } });
  check(r, { accepted: (res) => res.status >= 200 && res.status < 300 });
}
