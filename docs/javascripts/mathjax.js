window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
    enableMenu: false, // the menu loads further components from the network
  },
  loader: { load: [] },
  startup: { typeset: true },
};
document$.subscribe(() => {
  MathJax.typesetPromise();
});
