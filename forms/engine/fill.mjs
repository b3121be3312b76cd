#!/usr/bin/env node
// Terrain harness around @getodk/xforms-engine (the engine of ODK Web Forms).
//
// Reads ONE JSON object on stdin and writes ONE JSON object on stdout.
//
//   single: {"xform": "<xml>", "answers": {...}, "language": "Français (fr)",
//            "attachments": {"file.csv": "<text>"}}            (attachments optional)
//        -> {"ok", "submission_xml", "violations", "errors", "skipped"}
//   batch:  {"xform": "<xml>", "batch": [{...answers}, ...], "language": ...}
//        -> {"results": [<single result>, ...]}
//
// `answers` has the shape of a KoboToolbox submission JSON: flat keys joined
// by "/" without the root node, string values, select_multiple as
// space-separated names, geopoint as "lat lon alt acc", a repeat as its full
// path whose value is a list of objects keyed by full paths.
//
// Exit code 0 whenever a JSON answer could be written; non-zero only on a
// crash (message on stderr). See README.md beside this file.

import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { JSDOM } from 'jsdom';

const HERE = path.dirname(fileURLToPath(import.meta.url));

// --- Runtime environment the engine expects (must exist before import) -----
const { window } = new JSDOM('');
globalThis.__dirname = HERE;
globalThis.DOMParser = window.DOMParser;
globalThis.document = window.document;
globalThis.Node = window.Node;

// Keep stdout for the one JSON answer: anything the engine logs goes to stderr.
for (const level of ['log', 'info', 'warn', 'debug', 'trace']) {
	console[level] = (...args) => console.error(...args);
}

const engine = await import('@getodk/xforms-engine');

// --- Constants ---------------------------------------------------------------

// Keys of a Kobo submission that are not questions (or are filled by the engine).
const IGNORED_PREFIXES = ['_', 'formhub/', 'meta/'];
const IGNORED_KEYS = new Set([
	'__version__',
	'meta',
	'formhub',
	// metadata question types
	'start',
	'end',
	'today',
	'deviceid',
	'username',
	'email',
	'audit',
	'simserial',
	'subscriberid',
	'phonenumber',
	'start-geopoint',
	'background-audio',
]);

// Fallback texts when the form defines no jr:constraintMsg / jr:requiredMsg,
// chosen by the language code in parentheses ("Français (fr)"); English
// (the ODK Collect / JavaRosa defaults) otherwise. Such violations carry
// "form_message": false.
const DEFAULT_MESSAGES = {
	en: {
		constraint: 'Sorry, this response is invalid!',
		required: 'Sorry, this response is required!',
	},
	fr: {
		constraint: 'Désolé, cette réponse est invalide !',
		required: 'Désolé, cette réponse est obligatoire !',
	},
};

const defaultMessages = (language) => {
	const code = /\(([A-Za-z]{2,3})(?:[-_][^)]*)?\)\s*$/.exec(language ?? '')?.[1]?.toLowerCase();
	return DEFAULT_MESSAGES[code] ?? DEFAULT_MESSAGES.en;
};

const isIgnoredKey = (key) =>
	IGNORED_KEYS.has(key) || IGNORED_PREFIXES.some((prefix) => key.startsWith(prefix));

// --- Helpers -------------------------------------------------------------------

const readStdin = async () => {
	const chunks = [];
	for await (const chunk of process.stdin) {
		chunks.push(chunk);
	}
	return Buffer.concat(chunks).toString('utf8');
};

const errorText = (error) => {
	if (error instanceof Error) {
		const causes = [];
		let cause = error.cause;
		while (cause instanceof Error && causes.length < 5) {
			causes.push(cause.message);
			cause = cause.cause;
		}
		if (Array.isArray(error.errors)) {
			for (const inner of error.errors) {
				causes.push(inner instanceof Error ? inner.message : String(inner));
			}
		}
		return [error.message, ...causes].filter(Boolean).join(': ');
	}
	return String(error);
};

const attachmentFetcher = (attachments) => async (url) => {
	const href = String(url?.href ?? url);
	const name = decodeURIComponent(href.split('/').pop() ?? '');
	if (Object.hasOwn(attachments, name)) {
		return new Response(String(attachments[name]), { status: 200 });
	}
	return new Response('', { status: 404, statusText: 'Not Found' });
};

/** Key of a node in a Kobo submission: its nodeset without the root. */
const makeKeyOf = (rootNodeset) => {
	const prefix = `${rootNodeset}/`;
	return (node) => {
		const nodeset = node.definition.nodeset;
		return nodeset.startsWith(prefix) ? nodeset.slice(prefix.length) : nodeset;
	};
};

const asAnswerString = (value) => {
	if (value == null) return '';
	if (typeof value === 'string') return value;
	if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
		return String(value);
	}
	return null; // not a scalar
};

const splitList = (value) => value.split(/\s+/).filter((part) => part !== '');

// --- Filling one instance --------------------------------------------------------

class Filler {
	constructor(root, errors, skipped) {
		this.root = root;
		this.errors = errors;
		this.skipped = skipped;
		this.keyOf = makeKeyOf(root.definition.nodeset);
		/** @type {{node: any, label: string, value: string}[]} */
		this.setLeaves = [];
	}

	/**
	 * Fills the children of `parent` from the answer object `answers`.
	 * `scope` is the key of the enclosing repeat ('' at the top level), `where`
	 * a human label of the answer object for messages, `used` the set of keys of
	 * `answers` consumed so far.
	 */
	fillChildren(parent, answers, scope, where, used) {
		for (const child of parent.currentState.children ?? []) {
			this.fillNode(child, answers, scope, where, used);
		}
	}

	/** Readable position of an answer key, e.g. "members[2]/age". */
	labelFor(answerKey, scope, where) {
		const relative =
			scope !== '' && answerKey.startsWith(`${scope}/`) ? answerKey.slice(scope.length + 1) : answerKey;
		return `${where}${relative}`;
	}

	lookup(answers, key, scope) {
		if (Object.hasOwn(answers, key)) return key;
		if (scope !== '' && key.startsWith(`${scope}/`)) {
			const relative = key.slice(scope.length + 1);
			if (Object.hasOwn(answers, relative)) return relative;
		}
		return null;
	}

	fillNode(node, answers, scope, where, used) {
		const key = this.keyOf(node);
		switch (node.nodeType) {
			case 'group':
				this.fillChildren(node, answers, scope, where, used);
				return;
			case 'repeat-range:controlled':
			case 'repeat-range:uncontrolled':
				this.fillRepeat(node, key, answers, scope, where, used);
				return;
			case 'repeat-instance':
				return; // handled by fillRepeat
			default:
				break;
		}

		const answerKey = this.lookup(answers, key, scope);
		if (answerKey == null) return;
		used.add(answerKey);
		const raw = answers[answerKey];
		const label = this.labelFor(answerKey, scope, where);
		const value = asAnswerString(raw);
		if (value == null) {
			this.errors.push(`${label}: expected a string value, got ${JSON.stringify(raw)}`);
			return;
		}
		this.setLeaf(node, value, label);
	}

	fillRepeat(range, key, answers, scope, where, used) {
		const answerKey = this.lookup(answers, key, scope);
		let items = [];
		if (answerKey != null) {
			used.add(answerKey);
			items = answers[answerKey];
			if (!Array.isArray(items)) {
				this.errors.push(
					`${this.labelFor(answerKey, scope, where)}: is a repeat, expected a list of objects, got ${JSON.stringify(items)}`
				);
				return;
			}
		}
		const label = this.labelFor(answerKey ?? key, scope, where);

		const current = range.currentState.children.length;
		if (range.nodeType === 'repeat-range:uncontrolled') {
			if (current < items.length) {
				range.addInstances(undefined, items.length - current);
			} else if (current > items.length) {
				range.removeInstances(items.length, current - items.length);
			}
		}
		const instances = range.currentState.children;
		if (instances.length !== items.length) {
			this.errors.push(
				`${label}: the form's repeat count gives ${instances.length} instance(s) but the answers have ${items.length}`
			);
		}

		const count = Math.min(instances.length, items.length);
		for (let index = 0; index < count; index += 1) {
			const item = items[index];
			const itemLabel = `${label}[${index + 1}]`;
			const itemWhere = `${itemLabel}/`;
			if (item == null || typeof item !== 'object' || Array.isArray(item)) {
				this.errors.push(`${itemLabel}: expected an object, got ${JSON.stringify(item)}`);
				continue;
			}
			const itemUsed = new Set();
			this.fillChildren(instances[index], item, key, itemWhere, itemUsed);
			this.reportUnused(item, itemUsed, key, itemWhere);
		}
	}

	setLeaf(node, value, label) {
		const state = node.currentState;
		if (node.nodeType === 'model-value' || node.nodeType === 'note' || node.nodeType === 'attribute') {
			this.skipped.push(label); // calculated / preloaded / hidden / note: the engine fills it
			return;
		}
		if (state.readonly) {
			this.skipped.push(label);
			return;
		}
		try {
			switch (node.nodeType) {
				case 'select': {
					const wanted = node.selectType === 'select1' ? (value === '' ? [] : [value]) : splitList(value);
					const missing = wanted.filter((name) => node.getValueOption(name) == null);
					if (missing.length > 0) {
						const available = node.currentState.valueOptions.map((item) => item.value);
						this.errors.push(
							`${label}: choice(s) ${missing.map((m) => JSON.stringify(m)).join(', ')} not in the list ` +
								`(available now: ${available.length ? available.join(', ') : 'none'})`
						);
					}
					node.selectValues(wanted.filter((name) => !missing.includes(name)));
					break;
				}
				case 'rank':
					node.setValues(splitList(value));
					break;
				case 'trigger':
					node.setValue(value !== '');
					break;
				case 'upload':
					node.setValue(value === '' ? null : new File([], value));
					break;
				case 'input':
				case 'range':
					node.setValue(value);
					break;
				default:
					this.errors.push(`${label}: cannot set a value on a node of type ${node.nodeType}`);
					return;
			}
		} catch (error) {
			this.errors.push(`${label}: the engine refused the value ${JSON.stringify(value)}: ${errorText(error)}`);
			return;
		}

		if (node.nodeType === 'input' || node.nodeType === 'range') {
			if (value.trim() !== '' && node.currentState.instanceValue === '' && node.currentState.relevant) {
				this.errors.push(
					`${label}: the engine did not accept ${JSON.stringify(value)} as a ${node.valueType} value`
				);
			}
		}
		this.setLeaves.push({ node, label, value });
	}

	reportUnused(answers, used, scope, where) {
		for (const key of Object.keys(answers)) {
			if (used.has(key) || isIgnoredKey(key)) continue;
			this.errors.push(
				`${this.labelFor(key, scope, where)}: answer key ${JSON.stringify(key)} matches no question in the form`
			);
		}
	}

	/** Checks done once every value is in: relevance and select lists. */
	finalChecks() {
		for (const { node, label, value } of this.setLeaves) {
			if (value.trim() === '') continue;
			if (!node.currentState.relevant) {
				this.errors.push(`${label}: question is not relevant, its answer ${JSON.stringify(value)} is dropped`);
				continue;
			}
			if (node.nodeType === 'select') {
				const available = new Set(node.currentState.valueOptions.map((item) => item.value));
				const gone = node.currentState.value.filter((name) => !available.has(name));
				if (gone.length > 0) {
					this.errors.push(`${label}: choice(s) ${gone.join(', ')} no longer in the filtered list`);
				}
			}
		}
	}
}

// --- Violations ------------------------------------------------------------------

const collectViolations = (root, requestedLanguage) => {
	// A form without translations has the synthetic language '': then the
	// requested language picks the fallback texts.
	const fallback = defaultMessages(root.currentState.activeLanguage?.language || requestedLanguage);
	return root.validationState.violations.map((ref) => {
		const { violation } = ref;
		const formMessage = violation.message?.asString ?? '';
		return {
			ref: ref.reference,
			key: ref.reference
				.replace(/^\/[^/]+\//, '')
				.replace(/\[\d+\]/g, ''),
			kind: violation.condition,
			message: formMessage !== '' ? formMessage : fallback[violation.condition],
			form_message: formMessage !== '',
		};
	});
};

// --- Language --------------------------------------------------------------------

const applyLanguage = (root, language, errors) => {
	if (language == null || language === '') return;
	const languages = root.languages;
	if (languages.length === 1 && languages[0].isSyntheticDefault) return; // form has no translations
	const match = languages.find((lang) => lang.language === language);
	if (match == null) {
		errors.push(
			`language ${JSON.stringify(language)} not in the form (has: ${languages.map((l) => JSON.stringify(l.language)).join(', ')})`
		);
		return;
	}
	root.setLanguage(match);
};

// --- One answer set ----------------------------------------------------------------

const fillOne = async (form, answers, language, preload) => {
	const errors = [];
	const skipped = [];
	if (answers == null || typeof answers !== 'object' || Array.isArray(answers)) {
		return {
			ok: false,
			submission_xml: null,
			violations: [],
			errors: [`answers must be a JSON object, got ${JSON.stringify(answers)}`],
			skipped,
		};
	}

	const instance = form.createInstance({ preloadProperties: preload });
	const { root } = instance;
	applyLanguage(root, language, errors);

	const filler = new Filler(root, errors, skipped);
	const used = new Set();
	filler.fillChildren(root, answers, '', '', used);
	filler.reportUnused(answers, used, '', '');
	filler.finalChecks();

	const violations = collectViolations(root, language);
	let submissionXml = null;
	if (violations.length === 0) {
		const payload = await root.prepareInstancePayload({ payloadType: 'monolithic' });
		if (payload.status === 'ready') {
			const file = payload.data[0].get(engine.constants.INSTANCE_FILE_NAME);
			submissionXml = await file.text();
		} else {
			errors.push(`submission payload not ready (status ${payload.status})`);
		}
	}

	return {
		ok: violations.length === 0 && errors.length === 0,
		submission_xml: submissionXml,
		violations,
		errors,
		skipped,
	};
};

const failedResult = (message) => ({
	ok: false,
	submission_xml: null,
	violations: [],
	errors: [message],
	skipped: [],
});

// --- Main --------------------------------------------------------------------------

const main = async () => {
	const text = await readStdin();
	let request;
	try {
		request = JSON.parse(text);
	} catch (error) {
		throw new Error(`stdin is not one JSON object: ${errorText(error)}`);
	}
	if (request == null || typeof request !== 'object' || typeof request.xform !== 'string') {
		throw new Error('stdin JSON must be an object with an "xform" string');
	}

	const isBatch = Array.isArray(request.batch);
	const answerSets = isBatch ? request.batch : [request.answers ?? {}];
	const language = request.language ?? null;
	const preload = request.preload ?? {};

	let form = null;
	let loadError = null;
	try {
		form = await engine.loadForm(request.xform, {
			fetchFormAttachment: attachmentFetcher(request.attachments ?? {}),
			missingResourceBehavior: engine.constants.MISSING_RESOURCE_BEHAVIOR.BLANK,
		});
		if (form.status === 'failure') {
			loadError = `the engine could not load the form: ${errorText(form.error)}`;
			form = null;
		}
	} catch (error) {
		loadError = `the engine could not load the form: ${errorText(error)}`;
	}

	const results = [];
	for (const answers of answerSets) {
		if (form == null) {
			results.push(failedResult(loadError));
			continue;
		}
		try {
			results.push(await fillOne(form, answers, language, preload));
		} catch (error) {
			results.push(failedResult(`engine error while filling: ${errorText(error)}`));
		}
	}

	const output = isBatch ? { results } : results[0];
	await new Promise((resolve, reject) => {
		process.stdout.write(`${JSON.stringify(output)}\n`, (error) => (error ? reject(error) : resolve()));
	});
};

try {
	await main();
	process.exit(0);
} catch (error) {
	process.stderr.write(`fill.mjs: ${error instanceof Error ? error.stack : String(error)}\n`);
	process.exit(2);
}
