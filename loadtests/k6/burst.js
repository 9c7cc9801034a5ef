// A burst producer: COUNT messages as fast as VUS producers can send them,
// then stop; tidegate delivers them at the destination's pace.
//   k6 run -e TARGET=... -e COUNT=3000 -e VUS=50 burst.js
import http from 'k6/http';
import { check } from 'k6';

const body = JSON.stringify({ event: 'lead.scored', pad: 'x'.repeat(200) });
export const options = {
  scenarios: {
    burst: {
      executor: 'shared-iterations',
      vus: Number(__ENV.VUS || 50),
      iterations: Number(__ENV.COUNT || 3000),
      maxDuration: __ENV.MAX_DURATION || '60s',
    },
  },
  summaryTrendStats: ['avg', 'p(99)', 'max'],
};
export default function () {
  const r = http.post(__ENV.TARGET, body, { headers: { 'Content-Type': 'application/json' } });
  check(r, { accepted: (res) => res.status === 202 });
}
