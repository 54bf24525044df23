window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
// MathJax typesets each page once it has loaded (tex-svg.js comes after this file); on a
// page switched to without a reload, typeset again once it is there.
document$.subscribe(() => {
  if (typeof MathJax.typesetPromise === "function") MathJax.typesetPromise();
});
