// Vercel AI SDK scenarios against a running hflocal, for tests/clients/test_ai_sdk.py.
//
// Usage: node ai_sdk.mjs SCENARIO '{"baseURL": ..., "model": ..., ...}'
// Prints one JSON document on stdout: what the SDK returned (steps, tool calls, stream parts, the
// request bodies it sent), for the Python test to check. An SDK error is printed as
// {"error": {name, message, ...}} with exit status 0, so the test can check that too.
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateObject, generateText, isStepCount, Output, streamText, tool } from 'ai';
import { z } from 'zod';

const [scenario, rawOptions] = process.argv.slice(2);
const options = JSON.parse(rawOptions ?? '{}');

function provider(extra = {}) {
  return createOpenAICompatible({
    name: 'hflocal',
    baseURL: options.baseURL,
    includeUsage: options.includeUsage ?? true,
    supportsStructuredOutputs: options.supportsStructuredOutputs ?? false,
    ...extra,
  });
}

const model = () => provider().chatModel(options.model);
const written = [];
const tools = {
  write: tool({
    description: 'Write a file to the local filesystem.',
    inputSchema: z.object({
      content: z.string().describe('The content to write to the file'),
      filePath: z.string().describe('The path of the file to write'),
    }),
    execute: async ({ content, filePath }) => {
      written.push({ content, filePath });
      return `Wrote ${content.length} characters to ${filePath}.`;
    },
  }),
};
const prompt = options.prompt ?? 'Write "hello from hflocal" into hello.txt.';
const common = {
  maxOutputTokens: options.maxOutputTokens ?? 200, temperature: 0, maxRetries: 0, timeout: 120_000,
  include: { requestBody: true },
};

function body(request) {
  const raw = request?.body;
  return typeof raw === 'string' ? JSON.parse(raw) : raw ?? null;
}

function step(s) {
  return {
    finishReason: s.finishReason,
    rawFinishReason: s.rawFinishReason ?? null,
    text: s.text,
    toolCalls: s.toolCalls.map((c) => ({ toolCallId: c.toolCallId, toolName: c.toolName, input: c.input })),
    toolResults: s.toolResults.map((r) => ({ toolCallId: r.toolCallId, toolName: r.toolName, output: r.output })),
    usage: s.usage,
    request: body(s.request),
  };
}

const scenarios = {
  // generateText with tools: toolChoice from options (auto by default), up to `steps` steps.
  async generate() {
    const result = await generateText({
      ...common, model: model(), tools, prompt,
      toolChoice: options.toolChoice ?? 'auto',
      stopWhen: isStepCount(options.steps ?? 1),
    });
    return { text: result.text, steps: result.steps.map(step), totalUsage: result.totalUsage, written };
  },

  // streamText with tools: every part of the full stream, in order.
  async stream() {
    const result = streamText({
      ...common, model: model(), tools, prompt,
      toolChoice: options.toolChoice ?? 'auto',
      stopWhen: isStepCount(options.steps ?? 1),
    });
    const parts = [];
    for await (const part of result.fullStream) {
      const { type } = part;
      if (type === 'text-delta') parts.push({ type, text: part.text });
      else if (type === 'tool-input-start') parts.push({ type, id: part.id, toolName: part.toolName });
      else if (type === 'tool-input-delta') parts.push({ type, id: part.id, delta: part.delta });
      else if (type === 'tool-call') parts.push({ type, toolCallId: part.toolCallId, toolName: part.toolName, input: part.input });
      else if (type === 'tool-result') parts.push({ type, toolCallId: part.toolCallId, output: part.output });
      else if (type === 'finish-step') parts.push({ type, finishReason: part.finishReason, usage: part.usage });
      else if (type === 'finish') parts.push({ type, finishReason: part.finishReason, totalUsage: part.totalUsage });
      else if (type === 'error') parts.push({ type, error: describe(part.error) });
      else parts.push({ type });
    }
    const steps = await result.steps;
    return { text: await result.text, parts, steps: steps.map(step), written };
  },

  // Structured output: generateObject (the classic API) or generateText + Output.object.
  async object() {
    const schema = z.object({
      city: z.string(),
      country: z.string(),
      population: z.number().int(),
      landmarks: z.array(z.string()).max(3),
    });
    const structured = { ...common, model: model(), prompt: options.prompt ?? 'Describe Berlin as JSON.' };
    if (options.api === 'output') {
      const result = await generateText({ ...structured, output: Output.object({ schema }) });
      return { object: result.output, finishReason: result.finishReason, request: body(result.request) };
    }
    const result = await generateObject({ ...structured, schema });
    return { object: result.object, finishReason: result.finishReason, request: body(result.request) };
  },

  // Plain text, streamed, with usage (the simplest agent call).
  async text() {
    const result = streamText({ ...common, model: model(), prompt: options.prompt ?? 'Hi' });
    let text = '';
    for await (const delta of result.textStream) text += delta;
    return { text, usage: await result.usage, finishReason: await result.finishReason, request: body((await result.request)) };
  },
};

function describe(error) {
  if (!(error instanceof Error)) return { name: typeof error, message: String(error) };
  return {
    name: error.name,
    message: error.message,
    statusCode: error.statusCode ?? null,
    responseBody: error.responseBody ?? null,
    cause: error.cause instanceof Error ? error.cause.message : null,
  };
}

const run = scenarios[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}: one of ${Object.keys(scenarios).join(', ')}`);
  process.exit(2);
}
try {
  console.log(JSON.stringify(await run()));
} catch (error) {
  console.log(JSON.stringify({ error: describe(error), written }));
}
