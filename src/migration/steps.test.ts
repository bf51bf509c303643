import { test } from 'node:test';
import assert from 'node:assert/strict';
import { StepTimer, formatSteps } from './steps.js';

test('each step gets the time since the last mark, a step that comes again adds up, in first-seen order', () => {
  let t = 1000;
  const s = new StepTimer(() => t);
  t += 2.25; s.mark('pause');
  t += 10; s.mark('pages');
  t += 0.04; s.mark('capture');
  t += 5; s.mark('pages');
  assert.deepEqual(s.steps, { pause: 2.3, pages: 15, capture: 0 });
  assert.deepEqual(Object.keys(s.steps), ['pause', 'pages', 'capture']);
  assert.equal(formatSteps(s.steps), 'pause 2.3, pages 15.0, capture 0.0');
});
