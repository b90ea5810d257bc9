import { IntegrityError } from "../errors.js";
import { plural } from "../util/text.js";
import type { AuditVerifyReport } from "./verify.js";

/**
 * `audit anchor` refused: the trail does not verify, and an anchor would vouch for its
 * tampered state. Carries the verification report (the one `audit verify` gives).
 */
export class BrokenTrailError extends IntegrityError {
  readonly report: AuditVerifyReport;

  constructor(report: AuditVerifyReport) {
    const first = report.problems[0];
    super(
      `audit trail verification failed, so no anchor was written (it would vouch for a changed trail): ${plural(report.problems.length, "problem")}${first === undefined ? "" : `, first broken: ${first.object}: ${first.problem}`}`,
      [],
      "run `vmvault audit verify` for the full report; keep the repository as it is for investigation, and keep the anchors you already hold (`vmvault audit verify --anchor FILE` checks the trail against one)",
    );
    this.report = report;
  }
}
